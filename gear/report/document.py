"""The reports' document model: a list of blocks (headings and paragraphs as strings, tables,
plots) rendered to markdown and to one self-contained HTML page (images inline as base64)."""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl


@dataclass
class Table:
    df: pl.DataFrame
    sources: list[Path]


@dataclass
class Plot:
    file: str          # PNG in the reports folder
    caption: str
    sources: list[Path] = field(default_factory=list)


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.4g}")
    return str(v)


def table(rows: list[dict], sources: list[Path]) -> Table:
    return Table(pl.DataFrame(rows), sources)


def per_seed(values) -> str:
    """Per-seed values, `a / b / c`."""
    return " / ".join(fmt(float(v)) for v in values)


def _sources(sources: list[Path]) -> str:
    return "Source: " + (", ".join(f"`{p}`" for p in sources) or "no outputs yet")


def to_markdown(blocks: list) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Table):
            out.append("| " + " | ".join(b.df.columns) + " |")
            out.append("|" + "---|" * len(b.df.columns))
            out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in b.df.iter_rows()]
            out += ["", _sources(b.sources), ""]
        elif isinstance(b, Plot):
            caption = b.caption + (" " + _sources(b.sources) if b.sources else "")
            out += [f"![{Path(b.file).stem}]({b.file})", "", caption, ""]
        else:
            out += [b, ""]
    return "\n".join(out)


def _inline_md(text: str) -> str:
    parts = html.escape(text).split("`")  # `code` spans only
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: list, folder: Path, title: str = "GEAR report") -> str:
    """The page; `folder` holds the plots' PNGs (inlined)."""
    body = []
    for b in blocks:
        if isinstance(b, Table):
            head = "".join(f"<th>{html.escape(c)}</th>" for c in b.df.columns)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                           for row in b.df.iter_rows())
            body.append(f"<table><tr>{head}</tr>{rows}</table><p class=src>{_inline_md(_sources(b.sources))}</p>")
        elif isinstance(b, Plot):
            data = base64.b64encode((folder / b.file).read_bytes()).decode()
            src = f" {_inline_md(_sources(b.sources))}" if b.sources else ""
            body.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline_md(b.caption)}{src}</figcaption></figure>")
        elif b.startswith("#"):
            level = len(b) - len(b.lstrip("#"))
            body.append(f"<h{level}>{_inline_md(b[level:].strip())}</h{level}>")
        else:
            body.append(f"<p>{_inline_md(b)}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
             "img{max-width:100%}.src{font-size:85%;color:#555}")
    return ("<!DOCTYPE html><html><head><meta charset=utf-8>"
            f"<title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
