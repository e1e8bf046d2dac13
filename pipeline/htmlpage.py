"""The opening of the project's self-contained HTML reports (one style for every report people look at)."""

from __future__ import annotations

import html

STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
)


def page_start(title: str) -> str:
    """<!DOCTYPE ...> through the <h1> of a report titled `title` (escaped)."""
    t = html.escape(title)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{t}</title>"
        f"<style>{STYLE}</style></head><body><h1>{t}</h1>"
    )
