"""The one rule for secrets: what looks secret, and how it is masked wherever the project writes
(docs/security.md); and a tracking server's login moved from its URI to MLflow's environment.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from omegaconf import DictConfig, OmegaConf

from bigimage.data import storage

MASK = "***"
ENV_TRACKING_USERNAME = "MLFLOW_TRACKING_USERNAME"
ENV_TRACKING_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
SECRET_WORDS = frozenset(
    {"secret", "secrets", "password", "passwords", "passwd", "passphrase", "token", "key", "apikey"}
    | {"credential", "credentials"}
)
# Remembered values shorter than this are not searched for in free text (they would mask common words).
MIN_REMEMBERED = 4

_WORD_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# A URL's ``scheme://user-info@``, also as Hydra escapes it in a sweep's overrides (``http\://u\:p@h``).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*\\?://)(?P<userinfo>[^\s/?#'\"<>]+)@")
# ``key=value`` or ``key: value``; the value in a lookahead, so that a pair inside another's value is seen too.
_PAIR = re.compile(
    r"(?<![\w.\-])(?P<key>[A-Za-z_][\w.\-]*)[\"']?(?:=|:[ \t]*)"
    r"(?=(?P<value>\{[^{}]*\}|\[[^\[\]]*\]|'[^']*'|\"[^\"]*\"|[^\s,;)\]}'\"]+))"
)
_remembered: set[str] = set()
_remembered_pattern: re.Pattern[str] | None = None


def is_secret_key(key: str) -> bool:
    """Whether a config key or dotted key path looks secret (module doc: word parts of its segments)."""
    return any(part.lower() in SECRET_WORDS for part in _WORD_PARTS.findall(str(key)))


def url(value: str) -> str:
    """``value`` with the user-info of every URL in it masked (``postgresql://***@db/optuna``)."""
    return _USERINFO.sub(lambda match: f"{match.group('scheme')}{MASK}@", value)


def text(value: str) -> str:
    """Free text with URL user-info, secret ``key=value``/``key: value`` pairs and remembered secrets masked."""
    masked = _masked_pairs(url(value))
    pattern = _remembered_pattern
    return pattern.sub(MASK, masked) if pattern is not None else masked


def _masked_pairs(value: str) -> str:
    """``value`` with the value of every pair whose key is secret masked (a masked pair's inner pairs too)."""
    pieces, done = [], 0
    for match in _PAIR.finditer(value):
        if match.start() >= done and is_secret_key(match.group("key")):
            pieces += [value[done : match.start("value")], MASK]
            done = match.end("value")
    return "".join(pieces) + value[done:]


def login_to_environment(uri: str) -> str:
    """An http(s) tracking ``uri`` without its ``user:password@``, which goes to ``MLFLOW_TRACKING_USERNAME``
    and ``MLFLOW_TRACKING_PASSWORD`` of this process and its children instead, since MLflow prints and
    passes the URI on; any other URI, or one without a password, is returned as it is."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return uri
    os.environ[ENV_TRACKING_USERNAME] = unquote(parts.username or "")
    os.environ[ENV_TRACKING_PASSWORD] = unquote(parts.password)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def tree(node: Any) -> Any:
    """A plain container (mappings, lists, scalars) with secret keys' values and secrets in strings masked."""
    if isinstance(node, Mapping):
        return {key: MASK if is_secret_key(str(key)) and node[key] is not None else tree(node[key]) for key in node}
    if isinstance(node, (list, tuple)):
        return [tree(item) for item in node]
    return text(node) if isinstance(node, str) else node


def config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` as a plain mapping, interpolations resolved and secrets masked."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return dict(tree(container))


def mapping(entries: Mapping[str, Any]) -> dict[str, str]:
    """Params or tags as strings, a secret key's value masked and secrets in the others too."""
    return {key: MASK if is_secret_key(key) else text(str(value)) for key, value in entries.items()}


def protect(cfg: DictConfig | Mapping[str, Any] | None = None) -> None:
    """Remember ``cfg``'s secrets for :func:`text` and mask this process's log records from now on."""
    if cfg is not None:
        _remember(_secrets(_container(cfg)))
    _install_record_factory()


def _container(cfg: DictConfig | Mapping[str, Any]) -> Any:
    """``cfg`` as plain containers, resolved where it can be (the values the process will really use)."""
    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that cannot be resolved here (outside Hydra, say)
        return OmegaConf.to_container(cfg, resolve=False)


def _secrets(node: Any, secret: bool = False) -> Iterable[str]:
    """The values under secret keys and the passwords (or lone user names) of URLs anywhere in ``node``."""
    if isinstance(node, Mapping):
        for key, child in node.items():
            yield from _secrets(child, secret or is_secret_key(str(key)))
    elif isinstance(node, (list, tuple)):
        for child in node:
            yield from _secrets(child, secret)
    elif node is not None and not isinstance(node, bool):
        value = str(node)
        if secret:
            yield value
        for match in _USERINFO.finditer(value):
            parts = urlsplit((match.group("scheme") + match.group("userinfo")).replace("\\", "") + "@x")
            if found := parts.password or parts.username:  # a user name only alone: a token, not a name
                yield found


def _remember(found: Iterable[str]) -> None:
    """Add ``found`` to the values :func:`text` masks (not the short ones, nor unresolved interpolations)."""
    global _remembered_pattern
    new = {value for value in found if len(value) >= MIN_REMEMBERED and "${" not in value} - _remembered
    if not new:
        return
    _remembered.update(new)
    choices = "|".join(re.escape(value) for value in sorted(_remembered, key=len, reverse=True))
    _remembered_pattern = re.compile(rf"(?<!\w)(?:{choices})(?!\w)")


def _install_record_factory() -> None:
    """Mask every log record of this process when it is made, whichever logger and handler it goes to."""
    current = logging.getLogRecordFactory()
    if getattr(current, "masks_secrets", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return _masked_record(current(*args, **kwargs))

    factory.masks_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _masked_record(record: logging.LogRecord) -> logging.LogRecord:
    """``record`` with its message and its exception's text masked (formatted here, once)."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format: logging reports it when the record is handled
        return record
    masked = text(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        record.exc_text = text(logging.Formatter().formatException(record.exc_info))
    return record


def rewrite_yaml(path: str | os.PathLike[str]) -> None:
    """Replace a YAML file (Hydra's own run files) by its masked version, atomically, keeping its mode
    and its interpolations as written; a missing file is left missing."""
    target = Path(path)
    if not target.is_file():
        return
    loaded = OmegaConf.to_container(OmegaConf.load(target), resolve=False)
    masked = OmegaConf.to_yaml(OmegaConf.create(tree(loaded)))
    storage.write_bytes(str(target), masked.encode())  # keeps the file's mode
