"""Reading official checkpoint files (`.pth` zip or pickle, `.safetensors`) without ever unpickling objects."""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import ConversionError, _check_input_file, _reason, _show

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- checkpoint files
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTOCOL_2_PLUS = b"\x80"  # torch.save's legacy format starts with a pickle


def _head(path: Path, size: int) -> bytes:
    with path.open("rb") as file:
        return file.read(size)


def _checkpoint_format(path: Path) -> str:
    """`"zip"`, `"pickle"` or `"safetensors"`, told by the file's first bytes, not its name (a renamed file should
    still load, and a text file named `.pth` should be called what it is)."""
    head = _head(path, 16)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(_PICKLE_PROTOCOL_2_PLUS):
        return "pickle"
    raise ConversionError(
        f"The checkpoint {_show(path)} is not a PyTorch (.pth) or safetensors file (it starts with {head[:8]!r}): "
        "pass the official CAT-Seg model_base.pth / model_large.pth (or a .safetensors copy)."
    )


def _unpickling_failure(path: Path, error: Exception) -> ConversionError:
    text = str(error)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        # weights_only refused to import a global: the pickle holds objects other than tensors (or a payload).
        return ConversionError(
            f"The checkpoint {_show(path)} holds pickled Python objects, not only tensors (it asks for "
            f"{refused.group(1)}); they were not run, as the converter only reads weights "
            "(torch.load(weights_only=True)): pass a checkpoint that holds a state dict of tensors."
        )
    detail = re.search(r"(Unsupported [^\n]*|Trying to load [^\n]*)", text)
    return ConversionError(
        f"The checkpoint {_show(path)} is corrupt (unpickling failed"
        f"{': ' + detail.group(1).strip() if detail else ''}): download or copy it again."
    )


def _read_checkpoint(path: Path) -> Any:
    kind = _checkpoint_format(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        header_length = int.from_bytes(_head(path, 8), "little")
        if 8 + header_length > path.stat().st_size:
            raise ConversionError(
                f"The checkpoint {_show(path)} is a truncated safetensors file (its header alone needs "
                f"{8 + header_length} bytes, the file has {path.stat().st_size}): download or copy it again."
            )
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own SafetensorError (not an OSError)
            raise ConversionError(
                f"The checkpoint {_show(path)} is a truncated or corrupt safetensors file ({_reason(error)}): "
                "download or copy it again."
            ) from None
    try:
        with warnings.catch_warnings():
            # A corrupt pickle can claim any protocol; torch warns about it before failing: the error says enough.
            warnings.simplefilter("ignore", UserWarning)
            # An open file, not the path: torch.load picks a reader by the file name, and the content decides here.
            with path.open("rb") as file:
                return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _unpickling_failure(path, error) from None
    except EOFError:
        raise ConversionError(
            f"The checkpoint {_show(path)} is truncated (it ends in the middle of the data): download or copy it again."
        ) from None
    except RuntimeError as error:  # torch's own reader: a damaged zip archive or a short legacy file
        reason = "its zip archive cannot be read" if kind == "zip" else _reason(error)
        raise ConversionError(
            f"The checkpoint {_show(path)} is truncated or corrupt ({reason}): download or copy it again."
        ) from None
    except Exception as error:  # anything else a damaged file makes the (restricted) unpickler raise
        raise ConversionError(
            f"The checkpoint {_show(path)} is corrupt ({type(error).__name__}: {_reason(error)}): "
            "download or copy it again."
        ) from None


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads an official checkpoint: a detectron2 `.pth` (`{"model": state_dict}` or a bare state dict, read with
    `weights_only=True`, so no pickled code can run) or a `.safetensors` file (the format is told by the content).

    Raises:
        `ConversionError`: the file is missing, empty, truncated, corrupt, not a checkpoint, holds pickled objects
            other than tensors, holds something else than a state dict, or a tensor with NaN/Inf values.
    """
    path = _check_input_file(path, "checkpoint")
    checkpoint = _read_checkpoint(path)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]  # detectron2's {"model": ..., "iteration": ...}
    if not isinstance(checkpoint, dict):
        raise ConversionError(
            f"The checkpoint {_show(path)} holds a {type(checkpoint).__name__}, not a state dict (a dict of tensors, "
            "or detectron2's {'model': state dict}): pass an official CAT-Seg checkpoint."
        )
    if not checkpoint:
        raise ConversionError(
            f"The checkpoint {_show(path)} holds an empty state dict: pass an official CAT-Seg checkpoint."
        )
    for key, value in checkpoint.items():
        if not isinstance(key, str):
            raise ConversionError(
                f"The checkpoint {_show(path)} is not a state dict: it has a key {key!r} that is not a parameter name "
                "(a string); pass an official CAT-Seg checkpoint."
            )
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"The checkpoint {_show(path)} is not a state dict: its entry {key!r} is a {type(value).__name__}, "
                "not a tensor; pass an official CAT-Seg checkpoint."
            )
    for key, value in checkpoint.items():
        # A damaged download can decode to NaN/Inf weights; the model would then give NaN for every image.
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            count = int((~torch.isfinite(value)).sum())
            raise ConversionError(
                f"The checkpoint {_show(path)} is damaged: tensor {key!r} holds {count} NaN/Inf value(s) "
                f"(of {value.numel()}); download it again."
            )
    return checkpoint
