"""The converter's errors and the checks shared by its input files: one-line messages naming the bad value."""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class ConversionError(ValueError):
    """A bad input to the converter (checkpoint, official config, BPE file, output folder, variant).

    The message is one line: what was wrong (naming the file, tensor or value) and what to do about it.
    """


class CheckpointMismatchError(ConversionError):
    """The checkpoint's tensors do not map one to one onto the model's parameters, or have the wrong shapes."""


def _show(path: str | os.PathLike) -> str:
    return repr(str(path))


def _reason(error: BaseException) -> str:
    """An exception as a one-line reason (OS errors by their `strerror`, so without the errno prefix)."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())


def _some(names: list[str], limit: int = 8) -> str:
    """The first `limit` names, then how many more: keeps messages about large checkpoints to one readable line."""
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_input_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a `Path`, once it is known to be a readable, non-empty file; `what` names it in messages."""
    try:
        path = Path(path)
    except TypeError:
        raise ConversionError(f"The {what} must be a file path, got {path!r}.") from None
    if not path.exists():
        raise ConversionError(f"The {what} {_show(path)} does not exist: check the path.")
    if path.is_dir():
        raise ConversionError(f"The {what} {_show(path)} is a folder, not a file: pass the file itself.")
    try:
        with path.open("rb") as file:
            file.read(1)
        size = path.stat().st_size
    except OSError as error:
        raise ConversionError(
            f"The {what} {_show(path)} cannot be read ({_reason(error)}): check its permissions."
        ) from None
    if size == 0:
        raise ConversionError(
            f"The {what} {_show(path)} is empty (0 bytes): the download or copy failed; get it again."
        )
    return path
