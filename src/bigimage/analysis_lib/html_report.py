"""The Markdown report as one self-contained HTML page with its figures inside, since MLflow's artifact
viewer resolves no relative image link.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

HTML_FILE = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 1em auto; padding: 0 1em; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _embedding_renderer(directory: Path) -> MarkdownIt:
    """markdown-it whose images that name a PNG file in ``directory`` come out as ``data:`` URIs."""
    markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
    rules = markdown.renderer.rules  # type: ignore[attr-defined]  # RendererHTML's; the protocol omits it
    default_image = rules["image"]

    def image(renderer: Any, tokens: Sequence[Any], index: int, options: Any, env: Any) -> str:
        token = tokens[index]
        source = str(token.attrGet("src") or "")
        path = directory / source
        if source.endswith(".png") and "/" not in source and path.is_file():
            token.attrSet("src", "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii"))
        return default_image(tokens, index, options, env)

    markdown.add_render_rule("image", image)
    return markdown


def render_html(markdown_text: str, directory: Path, title: str = "Analysis report") -> str:
    """``markdown_text`` as a standalone page, its images from ``directory`` embedded."""
    body = _embedding_renderer(directory).render(markdown_text)
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )


def write_html(markdown_text: str, directory: Path) -> Path:
    """Write :func:`render_html` of ``markdown_text`` as ``report.html`` in ``directory``; returns its path."""
    path = directory / HTML_FILE
    path.write_text(render_html(markdown_text, directory), encoding="utf-8")
    return path
