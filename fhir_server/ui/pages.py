"""Server-rendered HTML pages: Jinja2 templates (ui/templates/, autoescaped) and the
headers every page carries.

A page holds no script and loads nothing: its stylesheet is inlined and allowed by its
hash in the Content-Security-Policy, its charts are SVG images in `data:` URLs (an SVG
shown as an image runs nothing). With the headers every answer of the server gets
(nosniff, Cache-Control: no-store, set by the auth middleware), pages cannot be framed
and send no referrer.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi.responses import Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).parent / "templates"
HTML = "text/html; charset=utf-8"


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


@lru_cache(maxsize=1)
def stylesheet() -> tuple[str, str]:
    """The inlined CSS and its CSP source ('sha256-...')."""
    css = (TEMPLATES / "ui.css").read_text("utf-8")
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return css, f"'sha256-{digest}'"


def security_headers() -> dict[str, str]:
    _, style = stylesheet()
    policy = (
        f"default-src 'none'; style-src {style}; img-src data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


def render(template: str, **context: Any) -> str:
    css, _ = stylesheet()
    return environment().get_template(template).render(css=css, **context)


def html_response(page: str, status: int = 200) -> Response:
    return Response(page, status, security_headers(), media_type=HTML)


def svg_data(svg: bytes) -> str:
    """An SVG for an `<img src="data:image/svg+xml;base64,...">`."""
    return base64.b64encode(svg).decode("ascii")
