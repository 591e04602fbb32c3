"""Markdown helpers of the benchmark reports: number formatting, tables, method notes from docstrings."""
from __future__ import annotations


def fmt_num(x, digits=2, pct=False) -> str:
    """A number with fixed digits (as a percentage of 1 with ``pct``); None and NaN print as a dash,
    strings pass through."""
    if isinstance(x, str):
        return x
    if x is None or x != x:  # NaN
        return "—"
    return f"{100 * x:.{digits}f}" if pct else f"{x:.{digits}f}"


def fmt_times(x) -> str:
    """A ratio with its × sign (a dash when there is none)."""
    return fmt_num(x) + ("×" if x else "")


def fmt_count(x) -> str:
    """Large counts in engineering notation (GFLOP etc.)."""
    return "—" if x is None else f"{x:.3g}"


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table as lines, ending with a blank line."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def doc_body(doc: str) -> str:
    """A module docstring without its first paragraph (the summary), for the report's method notes."""
    return doc.strip().split("\n\n", 1)[-1].strip()
