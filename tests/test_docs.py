"""The repository explains itself: its pages refer to nothing outside it, and what they name exists.

Real checks over the real files: every file git tracks, every link of the README and
the pages of ``docs/``, and every command in their shell blocks, composed by Hydra as ``run.py`` would
compose it, or parsed by the analysis script it names.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 250

# Written so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./shared\b|/work/share[d]\b|\bDESIGN\.md\b|\bPITFALLS\.md\b|\bthe pitfalls\s+file\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SHELL_BLOCK = re.compile(r"^```(?:bash|sh)\n(.*?)^```", re.S | re.M)
# `src/...py`, `conf/...yaml`: a path into the repository written as code in a page.
CODE_PATH = re.compile(r"`((?:src|tests|conf|analysis|benchmarks|experiments|docs)/[\w./-]*\.(?:py|ya?ml|md|lock))`")
PLACEHOLDER = re.compile(r"<[^>]*>")


def repository_files() -> list[Path]:
    """What a clone holds: the files git tracks."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / name for name in sorted(set(listed.split("\0"))) if name and (ROOT / name).exists()]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, IsADirectoryError):
        return None


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings (outside code blocks), numbered as GitHub numbers repeats."""
    found: set[str] = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            name, number = base, 0
            while name in found:
                number += 1
                name = f"{base}-{number}"
            found.add(name)
    return found


def documents() -> list[Path]:
    return [README, *PAGES]


def test_no_file_refers_to_a_path_outside_the_repository() -> None:
    offenders = []
    for path in repository_files():
        if path.is_symlink() and not path.resolve().is_relative_to(ROOT):
            offenders.append(f"{path.relative_to(ROOT)} -> {path.resolve()}")
        text = text_of(path)
        for number, line in enumerate((text or "").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("page", documents(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_link_and_path_of_a_page_exists(page: Path) -> None:
    text = FENCE.sub("", page.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        location, _, anchor = target.partition("#")
        resolved = (page.parent / location).resolve() if location else page
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no such heading)")
    for written in CODE_PATH.findall(text):
        if not (ROOT / written).exists():
            broken.append(f"`{written}`")
    assert broken == []


def test_the_readme_is_a_front_door_to_every_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(README.read_text())}
    assert [page.name for page in PAGES if page not in linked] == []


def commands(page: Path) -> Iterator[list[str]]:
    """The command lines of a page's shell blocks as words (continuation lines joined, comments dropped,
    each placeholder such as ``<the run id>`` one word)."""
    for block in SHELL_BLOCK.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            if "<<" in line:  # a here-document: its script is Python, not a command
                continue
            yield shlex.split(PLACEHOLDER.sub("<placeholder>", line), comments=True)


def run_overrides(words: list[str]) -> list[str] | None:
    """The overrides of a ``run.py`` command (None: not one), placeholders such as ``<name>`` left out."""
    if not any(word.endswith("run.py") for word in words):
        return None
    after = words[[word.endswith("run.py") for word in words].index(True) + 1 :]
    return [word for word in after if "=" in word and not word.startswith("-") and not PLACEHOLDER.search(word)]


def group_options(group: str) -> set[str] | None:
    folder = ROOT / "conf" / group
    return {path.stem for path in folder.glob("*.yaml")} if folder.is_dir() else None


def single_values(overrides: list[str]) -> tuple[list[str], list[str]]:
    """The overrides with each sweep reduced to its first value (so Hydra composes them), and the keys
    of the sweeps that have no first value (intervals), which must exist all the same."""
    composed, keys = [], []
    for text, override in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        if not override.is_sweep_override():
            composed.append(text)
            continue
        values = list(override.sweep_string_iterator()) if not override.is_interval_sweep() else []
        options = group_options(override.key_or_group)
        if options is not None:
            assert set(values) <= options, (text, sorted(options))
        if values:
            composed.append(f"{override.get_key_element()}={values[0]}")
        else:
            keys.append(override.key_or_group)
    return composed, keys


@pytest.mark.parametrize("page", documents(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_run_command_of_a_page_composes(page: Path) -> None:
    """Every group, option and key a ``run.py`` command names exists: Hydra composes it."""
    checked = 0
    for words in commands(page):
        overrides = run_overrides(words)
        if overrides is None:
            continue
        composed, keys = single_values(overrides)
        cfg = compose_config(composed)
        missing = object()
        assert [key for key in keys if OmegaConf.select(cfg, key, default=missing) is missing] == [], words
        checked += 1
    if page == README:
        assert checked >= 5  # the README's commands were found


def analysis_script_help(script: Path) -> str:
    """The script's ``--help``, from its own parser (the script loaded as Python runs it)."""
    spec = importlib.util.spec_from_file_location(f"analysis_{script.stem}", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        module.main(["--help"])
    return out.getvalue()


def test_every_script_command_of_a_page_names_a_script_and_options_it_has() -> None:
    helps: dict[Path, str] = {}
    wrong = []
    for page in documents():
        for words in commands(page):
            scripts = [ROOT / word for word in words if re.fullmatch(r"(analysis|benchmarks)/\w+\.py", word)]
            for script in scripts:
                if not script.exists():
                    wrong.append(f"{page.name}: {script.relative_to(ROOT)}")
                elif script.parent.name == "analysis":
                    helps.setdefault(script, analysis_script_help(script))
                    wrong += [
                        f"{page.name}: {script.name} {flag}"
                        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", " ".join(words))
                        if not re.search(rf"{flag}\b", helps[script])
                    ]
            if words[:1] == ["make"]:
                target = words[1]
                if not re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M):
                    wrong.append(f"{page.name}: make {target}")
    assert wrong == []
    assert helps  # the pages do name analysis scripts
