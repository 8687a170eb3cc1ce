"""How catseg-hf words the errors its commands print: one line, whatever the exception held."""

from __future__ import annotations

from typing import Any


def one_line(error: BaseException | Any) -> str:
    """An exception (or any text) on one line: loader and OS errors can span several lines (lists of unpaired files,
    tracebacks of worker processes), and the commands promise one line per error. An exception without text is named
    by its type."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        return type(error).__name__
    return text


__all__ = ["one_line"]
