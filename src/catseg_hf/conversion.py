"""Conversion of official CAT-Seg (detectron2) checkpoints into `CATSegForSemanticSegmentation` folders.

The official checkpoints hold OpenAI-CLIP tensors under `sem_seg_head.predictor.clip_model.` (each attention with
separate q/k/v weights but one concatenated in-projection bias), the aggregator under
`sem_seg_head.predictor.transformer.` and the two guidance upsamplers at the top level.

Every bad input stops the conversion with a [`ConversionError`] whose message is one line saying what was wrong and
what to do: a checkpoint that is missing, empty, truncated, not a checkpoint at all, a pickle of anything but
tensors (never unpickled: the file is read with `torch.load(..., weights_only=True)`), a tensor with the wrong shape
or with NaN/Inf values; an official config that is not JSON or holds impossible values; a BPE file that cannot be
read; an output folder that is not empty (without `overwrite`) or cannot be written. All arguments are checked before
the checkpoint is read, and a folder is written into a temporary folder next to the output and moved into place only
once complete, so a failed conversion leaves nothing at the output and never touches an existing folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import secrets
import shutil
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig

from .configuration_catseg import CLIP_FINETUNE_MODES, PRESETS, CATSegConfig
from .modeling_catseg import CATSegForSemanticSegmentation, shifted_window_attention_mask

logger = logging.getLogger(__name__)

CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
AGGREGATOR_PREFIX = "sem_seg_head.predictor.transformer."

# Official Aggregator sub-module names -> ours (regular expressions over the key after AGGREGATOR_PREFIX).
_AGGREGATOR_RENAMES: list[tuple[str, str]] = [
    (r"^conv1\.", "aggregator.cost_embedding."),
    (r"^guidance_projection\.0\.", "aggregator.appearance_guidance_projection.0."),
    (r"^text_guidance_projection\.0\.", "aggregator.text_guidance_projection.0."),
    (r"^decoder_guidance_projection\.(\d+)\.0\.", r"aggregator.decoder_guidance_projections.\1.0."),
    (r"^layers\.(\d+)\.swin_block\.guidance_norm\.", r"aggregator.layers.\1.spatial_aggregation.guidance_norm."),
    (r"^layers\.(\d+)\.swin_block\.block_1\.", r"aggregator.layers.\1.spatial_aggregation.blocks.0."),
    (r"^layers\.(\d+)\.swin_block\.block_2\.", r"aggregator.layers.\1.spatial_aggregation.blocks.1."),
    (r"^layers\.(\d+)\.attention\.attention\.q\.", r"aggregator.layers.\1.class_aggregation.attention.query."),
    (r"^layers\.(\d+)\.attention\.attention\.k\.", r"aggregator.layers.\1.class_aggregation.attention.key."),
    (r"^layers\.(\d+)\.attention\.attention\.v\.", r"aggregator.layers.\1.class_aggregation.attention.value."),
    (r"^layers\.(\d+)\.attention\.MLP\.0\.", r"aggregator.layers.\1.class_aggregation.mlp.fc1."),
    (r"^layers\.(\d+)\.attention\.MLP\.2\.", r"aggregator.layers.\1.class_aggregation.mlp.fc2."),
    (r"^layers\.(\d+)\.attention\.norm(\d)\.", r"aggregator.layers.\1.class_aggregation.norm\2."),
    (r"^layers\.(\d+)\.attention\.padding_tokens$", r"aggregator.layers.\1.class_aggregation.padding_token"),
    (r"^layers\.(\d+)\.attention\.padding_guidance$", r"aggregator.layers.\1.class_aggregation.padding_guidance"),
    (r"^decoder(\d)\.up\.", lambda m: f"aggregator.decoder_stages.{int(m.group(1)) - 1}.upsample."),
    (r"^decoder(\d)\.conv\.double_conv\.(\d)\.", lambda m: f"aggregator.decoder_stages.{int(m.group(1)) - 1}.convs.{m.group(2)}."),
    (r"^head\.", "aggregator.head."),
]
# Inside a Swin block: official attention names -> ours.
_SWIN_ATTENTION_RENAMES = {"attn.q.": "attention.query.", "attn.k.": "attention.key.", "attn.v.": "attention.value.", "attn.proj.": "attention.proj."}
# Inside a CLIP residual block.
_CLIP_BLOCK_RENAMES = {
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
    "attn.out_proj.": "self_attn.out_proj.",
}


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


# --------------------------------------------------------------------------------------------------- configuration
def infer_clip_config(state_dict: dict[str, torch.Tensor]) -> CLIPConfig:
    """CLIP dimensions read off the official tensors' shapes (heads = width // 64, as in OpenAI CLIP)."""

    def tensor(name: str, ndim: int) -> torch.Tensor:
        key = CLIP_PREFIX + name
        if key not in state_dict:
            raise CheckpointMismatchError(
                f"The checkpoint has no tensor {key!r}: it is not an official CAT-Seg checkpoint (those hold their "
                f"CLIP under {CLIP_PREFIX!r})."
            )
        value = state_dict[key]
        if value.ndim != ndim:
            raise CheckpointMismatchError(
                f"Checkpoint tensor {key!r} has shape {tuple(value.shape)}, where CLIP has a {ndim}-d tensor: the "
                "checkpoint is damaged or not an official CAT-Seg checkpoint."
            )
        return value

    def num_blocks(prefix: str) -> int:
        pattern = re.compile(re.escape(CLIP_PREFIX + prefix) + r"(\d+)\.")
        ids = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
        if not ids:
            raise CheckpointMismatchError(
                f"The checkpoint has no {CLIP_PREFIX + prefix}N.* tensors: it is not an official CAT-Seg checkpoint."
            )
        return max(ids) + 1

    def heads(width: int, key: str) -> int:
        count = max(width // 64, 1)
        if width % count:
            raise CheckpointMismatchError(
                f"Checkpoint tensor {key!r} gives a CLIP width of {width}, which does not split into {count} heads of "
                "64 (OpenAI CLIP's rule): the checkpoint is damaged or not an official CAT-Seg checkpoint."
            )
        return count

    patch_embedding = tensor("visual.conv1.weight", 4)
    vision_width, channels, patch, patch_width = patch_embedding.shape
    if channels != 3 or patch != patch_width:
        raise CheckpointMismatchError(
            f"Checkpoint tensor {CLIP_PREFIX}visual.conv1.weight has shape {tuple(patch_embedding.shape)}, not "
            "(width, 3, patch, patch): the checkpoint is damaged or not an official CAT-Seg checkpoint."
        )
    vision_positions = tensor("visual.positional_embedding", 2).shape[0]
    grid = int(round((vision_positions - 1) ** 0.5)) if vision_positions > 1 else 0
    if grid < 1 or grid * grid != vision_positions - 1:
        raise CheckpointMismatchError(
            f"Checkpoint tensor {CLIP_PREFIX}visual.positional_embedding has {vision_positions} rows, not 1 + a "
            "square number (class token + patch grid): the checkpoint is damaged."
        )
    projection_dim = tensor("visual.proj", 2).shape[1]
    vocab_size, text_width = tensor("token_embedding.weight", 2).shape
    context_length = tensor("positional_embedding", 2).shape[0]
    text_mlp = tensor("transformer.resblocks.0.mlp.c_fc.weight", 2).shape[0]
    vision_mlp = tensor("visual.transformer.resblocks.0.mlp.c_fc.weight", 2).shape[0]
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=text_width,
        intermediate_size=text_mlp,
        num_hidden_layers=num_blocks("transformer.resblocks."),
        num_attention_heads=heads(text_width, CLIP_PREFIX + "token_embedding.weight"),
        max_position_embeddings=context_length,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=projection_dim,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    vision_config = dict(
        hidden_size=vision_width,
        intermediate_size=vision_mlp,
        num_hidden_layers=num_blocks("visual.transformer.resblocks."),
        num_attention_heads=heads(vision_width, CLIP_PREFIX + "visual.conv1.weight"),
        patch_size=patch,
        image_size=grid * patch,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def _check_variant(variant: str | None) -> None:
    if variant is not None and variant not in PRESETS:
        raise ConversionError(f"Unknown CAT-Seg variant {variant!r}: choose one of {sorted(PRESETS)} (or omit it).")


def config_from_official(
    state_dict: dict[str, torch.Tensor], variant: str | None = None, official_config: dict[str, Any] | None = None
) -> CATSegConfig:
    """A `CATSegConfig` for an official checkpoint: CLIP dims from the tensors; the other hyperparameters from the
    `variant` preset, overridden by an official config JSON (the format of the fixtures' `config.json`) when given.

    Raises:
        `ConversionError`: an unknown variant, or a configuration value the model cannot run with (named by its key
            in the official config).
        `CheckpointMismatchError`: the tensors do not have the layout of an official checkpoint.
    """
    return _config_from_official(state_dict, variant, official_config, "The official config")


def _config_from_official(
    state_dict: dict[str, torch.Tensor], variant: str | None, official_config: dict[str, Any] | None, source: str
) -> CATSegConfig:
    _check_variant(variant)
    clip_config = infer_clip_config(state_dict)
    if variant is None:
        variant = "large" if clip_config.vision_config.hidden_size >= 1024 else "base"
    preset = CATSegConfig.from_preset(variant)
    values = {k: v for k, v in preset.to_dict().items() if k in _CONFIG_FIELDS}
    origins: dict[str, str] = {}
    if official_config is not None:
        official_values, origins = _fields_from_official_config(official_config, source)
        values.update(official_values)
    _check_config_values(values, origins, source)
    _check_feature_grid(values, origins, source, clip_config)
    values["clip_config"] = clip_config
    # The cost embedding's input channels are the prompt templates: check that the templates match the tensors.
    cost_key = AGGREGATOR_PREFIX + "conv1.weight"
    if cost_key in state_dict and state_dict[cost_key].ndim == 4:
        if state_dict[cost_key].shape[1] != len(values["prompt_templates"]):
            raise CheckpointMismatchError(
                f"The checkpoint's cost embedding takes {state_dict[cost_key].shape[1]} template channel(s) but the "
                f"configuration has {len(values['prompt_templates'])} prompt template(s): pass --official-config."
            )
    try:
        return CATSegConfig(**values)
    except ValueError as error:  # the config's own checks (e.g. guidance taps beyond the CLIP depth)
        raise ConversionError(
            f"The configuration for this checkpoint is invalid: {_reason(error)} (pass the checkpoint's official "
            "config with --official-config, or the right --variant)."
        ) from None


_CONFIG_FIELDS = {
    "clip_resolution", "guidance_layer_indices", "decoder_guidance_dims", "decoder_guidance_proj_dims", "decoder_dims",
    "hidden_dim", "appearance_guidance_proj_dim", "text_guidance_proj_dim", "num_aggregation_layers",
    "num_attention_heads", "window_size", "mlp_ratio", "cost_embedding_kernel_size", "pad_len",
    "training_pooling_size", "inference_pooling_size", "linear_attention_eps", "prompt_templates", "clip_finetune",
    "ignore_index", "image_mean", "image_std", "size_divisibility",
}

# Official `aggregator` keys -> our field names.
_AGGREGATOR_FIELDS = {
    "text_guidance_proj_dim": "text_guidance_proj_dim",
    "appearance_guidance_proj_dim": "appearance_guidance_proj_dim",
    "decoder_dims": "decoder_dims",
    "decoder_guidance_dims": "decoder_guidance_dims",
    "decoder_guidance_proj_dims": "decoder_guidance_proj_dims",
    "num_layers": "num_aggregation_layers",
    "num_heads": "num_attention_heads",
    "hidden_dims": "hidden_dim",
    "window_sizes": "window_size",
    "pad_len": "pad_len",
}
# Official detectron2 cfg names -> our field names.
_CFG_FIELDS = {
    "MODEL.SEM_SEG_HEAD.CLIP_FINETUNE": "clip_finetune",
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": "ignore_index",
    "MODEL.CLIP_PIXEL_MEAN": "image_mean",
    "MODEL.CLIP_PIXEL_STD": "image_std",
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": "size_divisibility",
}


def _as_list(value: Any) -> Any:
    # Lists stay lists; anything else is kept as it is, so that the value checks report it instead of `list()` failing.
    return list(value) if isinstance(value, (list, tuple)) else value


def _fields_from_official_config(
    official: dict[str, Any], source: str = "The official config"
) -> tuple[dict[str, Any], dict[str, str]]:
    """Maps the fixture-format official configuration (see `official_tiny/config.json`) to our field names.

    Returns the values and, for each, the official key it came from (`"aggregator.window_sizes"`), for messages;
    `source` names the config in them.
    """
    if not isinstance(official, dict):
        raise ConversionError(
            f"{source} must be a JSON object (the official config.json format), got a {type(official).__name__}."
        )
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}

    def section(name: str) -> dict[str, Any]:
        content = official.get(name, {})
        if not isinstance(content, dict):
            raise ConversionError(f"{source}: {name!r} must be a JSON object, got {content!r}; fix the config file.")
        return content

    def take(field: str, value: Any, key: str) -> None:
        values[field] = value
        origins[field] = key

    aggregator = section("aggregator")
    for theirs, ours in _AGGREGATOR_FIELDS.items():
        if theirs in aggregator:
            take(ours, _as_list(aggregator[theirs]), f"aggregator.{theirs}")
    if aggregator.get("attention_type", "linear") != "linear":
        raise ConversionError(
            f"{source} aggregator.attention_type is {aggregator['attention_type']!r}: only 'linear' class attention "
            "(the released models') is supported."
        )
    pooling = section("pooling_sizes")
    if "train" in pooling:
        take("training_pooling_size", _as_list(pooling["train"]), "pooling_sizes.train")
    if "eval" in pooling:
        take("inference_pooling_size", _as_list(pooling["eval"]), "pooling_sizes.eval")
    if "templates" in official:
        take("prompt_templates", _as_list(official["templates"]), "templates")
    cfg = section("official_cfg")
    for theirs, ours in _CFG_FIELDS.items():
        if theirs in cfg:
            take(ours, _as_list(cfg[theirs]), f"official_cfg[{theirs!r}]")
    glue = section("catseg")
    if "clip_resolution" in glue:
        resolution = glue["clip_resolution"]
        if isinstance(resolution, (list, tuple)):
            # The model runs CLIP on square inputs; a non-square resolution has no place in the config.
            if len(resolution) != 2 or resolution[0] != resolution[1]:
                raise ConversionError(
                    f"{source} catseg.clip_resolution must be one size or a square [size, size], got {resolution!r}; "
                    "fix the config file."
                )
            resolution = resolution[0]
        take("clip_resolution", resolution, "catseg.clip_resolution")
    if "layer_indexes" in glue:
        take("guidance_layer_indices", _as_list(glue["layer_indexes"]), "catseg.layer_indexes")
    if "upsample1" in glue and "upsample2" in glue:
        channels = []
        for name in ("upsample1", "upsample2"):
            upsample = glue[name]
            if not isinstance(upsample, dict) or "out_channels" not in upsample:
                raise ConversionError(
                    f"{source} catseg.{name} must be an object with 'out_channels', got {upsample!r}; fix the "
                    "config file."
                )
            channels.append(upsample["out_channels"])
        take("decoder_guidance_dims", channels, "catseg.upsample1/upsample2.out_channels")
    if "size_divisibility" in glue:
        take("size_divisibility", glue["size_divisibility"], "catseg.size_divisibility")
    return values, origins


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a size


def _is_ints(value: Any, length: int, minimum: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(_is_int(v) and v >= minimum for v in value)


def _is_numbers(value: Any, length: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == length
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


_POSITIVE_INT_FIELDS = (
    "clip_resolution", "hidden_dim", "appearance_guidance_proj_dim", "text_guidance_proj_dim",
    "num_aggregation_layers", "num_attention_heads", "window_size", "pad_len", "size_divisibility",
)
_POSITIVE_PAIR_FIELDS = (
    "decoder_dims", "decoder_guidance_dims", "decoder_guidance_proj_dims", "training_pooling_size",
    "inference_pooling_size",
)


def _where(field: str, origins: dict[str, str], source: str) -> str:
    return f"{source} {origins[field]}" if field in origins else f"The preset's {field}"


def _fix(fields: tuple[str, ...], origins: dict[str, str]) -> str:
    # A value from the official config is fixed there; a preset value does not fit this checkpoint's geometry.
    if any(field in origins for field in fields):
        return "fix the config file"
    return "pass the checkpoint's official config (--official-config) or the right --variant"


def _check_config_values(values: dict[str, Any], origins: dict[str, str], source: str) -> None:
    """Refuses values the model cannot be built or run with (a zero window, a negative width, ...), naming where
    each came from; checks only the fields present, so it serves an official config alone and the merged values."""

    def fail(field: str, rule: str) -> None:
        raise ConversionError(
            f"{_where(field, origins, source)} must be {rule}, got {values[field]!r}: {_fix((field,), origins)}."
        )

    for field in _POSITIVE_INT_FIELDS:
        if field in values and not (_is_int(values[field]) and values[field] >= 1):
            fail(field, "a positive integer")
    for field in _POSITIVE_PAIR_FIELDS:
        if field in values and not _is_ints(values[field], 2, 1):
            fail(field, "a list of two positive integers")
    if "guidance_layer_indices" in values and not _is_ints(values["guidance_layer_indices"], 2, 0):
        fail("guidance_layer_indices", "a list of two CLIP block indices (integers >= 0)")
    if "ignore_index" in values and not _is_int(values["ignore_index"]):
        fail("ignore_index", "an integer")
    if "image_mean" in values and not _is_numbers(values["image_mean"], 3):
        fail("image_mean", "a list of three finite numbers (R, G, B)")
    if "image_std" in values and not (_is_numbers(values["image_std"], 3) and min(values["image_std"]) > 0):
        fail("image_std", "a list of three positive numbers (R, G, B)")
    templates = values.get("prompt_templates")
    if "prompt_templates" in values and not (
        isinstance(templates, list) and templates and all(isinstance(t, str) and "{}" in t for t in templates)
    ):
        fail("prompt_templates", "a non-empty list of strings, each with a '{}' for the class name")
    if "clip_finetune" in values and values["clip_finetune"] not in CLIP_FINETUNE_MODES:
        fail("clip_finetune", f"one of {list(CLIP_FINETUNE_MODES)}")
    hidden, heads = values.get("hidden_dim"), values.get("num_attention_heads")
    if _is_int(hidden) and _is_int(heads) and hidden % heads:
        raise ConversionError(
            f"{_where('hidden_dim', origins, source)} ({hidden}) must be a multiple of the number of attention heads "
            f"({origins.get('num_attention_heads', 'num_attention_heads')} = {heads}): "
            f"{_fix(('hidden_dim', 'num_attention_heads'), origins)}."
        )


def _check_feature_grid(values: dict[str, Any], origins: dict[str, str], source: str, clip_config: CLIPConfig) -> None:
    """The CLIP patch grid at `clip_resolution` must exist and cut into Swin windows (else every forward would fail)."""
    patch = clip_config.vision_config.patch_size
    resolution, window = values["clip_resolution"], values["window_size"]
    if resolution % patch:
        raise ConversionError(
            f"{_where('clip_resolution', origins, source)} ({resolution}) must be a multiple of the checkpoint's CLIP "
            f"patch size ({patch}): {_fix(('clip_resolution',), origins)}."
        )
    grid = resolution // patch
    # A window at least as large as the grid covers it whole; a smaller one must divide it.
    if window < grid and grid % window:
        raise ConversionError(
            f"{_where('window_size', origins, source)} is {window}, which does not divide the "
            f"{grid}x{grid} CLIP feature grid ({resolution} px / patch {patch}), so the Swin blocks cannot cut it into "
            f"windows: {_fix(('window_size', 'clip_resolution'), origins)}."
        )


def _read_official_config(official_config: str | os.PathLike | dict | None) -> tuple[dict[str, Any] | None, str]:
    """The official config as a dict, read and checked (structure and values) before any other work, and the name
    to give it in messages."""
    if official_config is None:
        return None, "The official config"
    if isinstance(official_config, dict):
        source = "The official config"
    elif isinstance(official_config, (str, os.PathLike)):
        path = _check_input_file(official_config, "official config")
        source = f"The official config {_show(path)}"
        try:
            official_config = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConversionError(f"{source} is not a text (UTF-8 JSON) file: pass the official config.json.") from None
        except json.JSONDecodeError as error:
            raise ConversionError(
                f"{source} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): fix the "
                "file or pass the official config.json."
            ) from None
    else:
        raise ConversionError(
            f"official_config must be a path or a dict, got a {type(official_config).__name__}."
        )
    values, origins = _fields_from_official_config(official_config, source)
    _check_config_values(values, origins, source)
    return official_config, source


def _rename_clip_key(name: str) -> str | None:
    """Official CLIP key (after CLIP_PREFIX) -> our key, for everything but the split attention tensors."""
    direct = {
        "token_embedding.weight": "clip.text_model.embeddings.token_embedding.weight",
        "positional_embedding": "clip.text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "clip.text_model.final_layer_norm.weight",
        "ln_final.bias": "clip.text_model.final_layer_norm.bias",
        "logit_scale": "clip.logit_scale",
        "visual.class_embedding": "clip.vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "clip.vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "clip.vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "clip.vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "clip.vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "clip.vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "clip.vision_model.post_layernorm.bias",
    }
    if name in direct:
        return direct[name]
    match = re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$", name)
    if match:
        tower = "vision_model" if match.group(1) else "text_model"
        rest = match.group(3)
        for theirs, ours in _CLIP_BLOCK_RENAMES.items():
            if rest.startswith(theirs):
                return f"clip.{tower}.encoder.layers.{match.group(2)}.{ours}{rest[len(theirs):]}"
    return None


# ----------------------------------------------------------------------------------------------- tensor mapping
def convert_official_state_dict(state_dict: dict[str, torch.Tensor], config: CATSegConfig) -> dict[str, torch.Tensor]:
    """Maps every official tensor to our parameter names.

    Raises `CheckpointMismatchError` naming the tensor and both shapes when a tensor has the wrong shape, and naming
    the keys when a tensor has no place in the model or a model parameter gets no tensor. The persistent Swin
    `attn_mask` buffers are checked against the masks we compute and dropped.
    """
    converted: dict[str, torch.Tensor] = {}
    # Our name -> (official key, how the tensor was derived from it), to report shape errors in the official terms.
    sources: dict[str, tuple[str, str]] = {}
    unmapped: list[str] = []

    def put(name: str, value: torch.Tensor, key: str, how: str = "copy") -> None:
        converted[name] = value
        sources[name] = (key, how)

    for key, value in state_dict.items():
        if key.startswith(CLIP_PREFIX):
            name = key[len(CLIP_PREFIX):]
            if name == "text_projection":
                put("clip.text_projection.weight", value.t().contiguous(), key, "transpose")
                continue
            if name == "visual.proj":
                put("clip.visual_projection.weight", value.t().contiguous(), key, "transpose")
                continue
            match = re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.(q|k|v)_proj_weight$", name)
            if match:
                tower = "vision_model" if match.group(1) else "text_model"
                put(f"clip.{tower}.encoder.layers.{match.group(2)}.self_attn.{match.group(3)}_proj.weight", value, key)
                continue
            match = re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_(bias|weight)$", name)
            if match:  # one concatenated q/k/v bias (and, in some checkpoints, weight)
                tower = "vision_model" if match.group(1) else "text_model"
                prefix = f"clip.{tower}.encoder.layers.{match.group(2)}.self_attn."
                for projection, chunk in zip("qkv", value.chunk(3)):
                    put(f"{prefix}{projection}_proj.{match.group(3)}", chunk.clone(), key, "split")
                continue
            ours = _rename_clip_key(name)
            if ours is None:
                unmapped.append(key)
            else:
                put(ours, value, key)
        elif key.startswith(AGGREGATOR_PREFIX):
            name = key[len(AGGREGATOR_PREFIX):]
            if re.match(r"^layers\.\d+\.swin_block\.block_\d\.attn_mask$", name):
                _check_swin_mask(key, value, config)
                continue
            ours = _rename_aggregator_key(name)
            if ours is None:
                unmapped.append(key)
            elif ours.endswith(("padding_token", "padding_guidance")):
                put(ours, value.reshape(-1), key, "flatten")
            else:
                put(ours, value, key)
        elif key.startswith(("upsample1.", "upsample2.")):
            index = int(key[len("upsample")]) - 1
            put(f"guidance_upsamplers.{index}.{key.split('.', 1)[1]}", value, key)
        elif key in ("pixel_mean", "pixel_std", "clip_pixel_mean", "clip_pixel_std"):
            continue  # normalisation constants, held by the config / image processor
        else:
            unmapped.append(key)

    shapes = _expected_shapes(config)
    # Shapes first: a wrong-sized fused bias splits into the wrong number of pieces, which would otherwise be
    # reported as missing parameters.
    _check_shapes(state_dict, sources, shapes)
    missing = sorted(set(shapes) - set(converted))
    extra = sorted(set(converted) - set(shapes))
    if unmapped or missing or extra:
        problems = []
        if unmapped:
            problems.append(f"{len(unmapped)} checkpoint tensor(s) with no place in the model: {_some(unmapped)}")
        if extra:
            problems.append(f"{len(extra)} mapped name(s) the model does not have: {_some(extra)}")
        if missing:
            problems.append(f"{len(missing)} model parameter(s) missing from the checkpoint: {_some(missing)}")
        raise CheckpointMismatchError(
            "The checkpoint does not match the model (" + "; ".join(problems) + "): is it an official CAT-Seg "
            "checkpoint, and do --variant / --official-config describe it?"
        )
    return converted


def _check_shapes(
    state_dict: dict[str, torch.Tensor], sources: dict[str, tuple[str, str]], shapes: dict[str, torch.Size]
) -> None:
    """Every official tensor must have the shape its model parameter(s) need, stated in the official layout."""
    targets: dict[str, tuple[str, str]] = {}  # official key -> (one of our names, how)
    for name, (key, how) in sources.items():
        if name in shapes:
            targets.setdefault(key, (name, how))
    for key, (name, how) in targets.items():
        target = tuple(shapes[name])
        if how == "transpose":
            expected = target[::-1]
        elif how == "split":
            expected = (3 * target[0], *target[1:])
        elif how == "flatten":
            expected = (1, 1, *target)  # the official padding tokens are (1, 1, dim)
        else:
            expected = target
        actual = tuple(state_dict[key].shape)
        matches = state_dict[key].numel() == math.prod(target) if how == "flatten" else actual == expected
        if not matches:
            raise CheckpointMismatchError(
                f"Checkpoint tensor {key!r} has shape {actual}, but the model needs {expected} there (for {name}): "
                "the checkpoint is damaged, or --variant / --official-config do not describe it."
            )


def _expected_shapes(config: CATSegConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = CATSegForSemanticSegmentation(config)
    return {name: value.shape for name, value in model.state_dict().items()}


def _rename_aggregator_key(name: str) -> str | None:
    for pattern, replacement in _AGGREGATOR_RENAMES:
        if re.match(pattern, name):
            renamed = re.sub(pattern, replacement, name)
            if ".spatial_aggregation.blocks." in renamed:
                for theirs, ours in _SWIN_ATTENTION_RENAMES.items():
                    renamed = renamed.replace(f".{theirs}", f".{ours}")
            return renamed
    return None


def _check_swin_mask(key: str, value: torch.Tensor, config: CATSegConfig) -> None:
    height, width = config.feature_resolution
    window = min(config.window_size, height, width)
    expected = shifted_window_attention_mask(height, width, window, config.window_size // 2, value.device)
    if value.shape != expected.shape or not torch.equal(value.to(expected.dtype), expected):
        raise CheckpointMismatchError(
            f"{key}: the stored shifted-window mask {tuple(value.shape)} differs from the one for a "
            f"{height}x{width} grid with window {window}; is clip_resolution right?"
        )


# --------------------------------------------------------------------------------------------------- output folder
def _check_output_dir(output_dir: str | os.PathLike, overwrite: bool, inputs: list[tuple[str, Path]]) -> Path:
    """The output folder as an absolute path, once it is known that it may be written (or replaced)."""
    try:
        output = Path(os.path.abspath(output_dir))
    except TypeError:
        raise ConversionError(f"The output folder must be a path, got {output_dir!r}.") from None
    if output.is_symlink():
        raise ConversionError(
            f"The output {_show(output)} is a symbolic link: pass the folder it points to, or another path."
        )
    if output.exists():
        if not output.is_dir():
            raise ConversionError(
                f"The output {_show(output)} is a file, not a folder: choose a folder path (the converter writes a "
                "model folder)."
            )
        try:
            entries = sorted(entry.name for entry in output.iterdir())
        except OSError as error:
            raise ConversionError(
                f"The output folder {_show(output)} cannot be read ({_reason(error)}): choose a folder you can "
                "write to."
            ) from None
        if entries and not overwrite:
            raise ConversionError(
                f"The output folder {_show(output)} is not empty (it holds {_some(entries, 5)}): pass --overwrite "
                "(overwrite=True) to replace it with the converted model, or choose a new or empty folder."
            )
        if entries:
            # Replacing the folder deletes what it holds: never an input of this conversion, nor the working folder.
            real_output = Path(os.path.realpath(output))
            for what, path in [*inputs, ("current working folder", Path.cwd())]:
                real = Path(os.path.realpath(path))
                if real == real_output or real_output in real.parents:
                    raise ConversionError(
                        f"The output folder {_show(output)} holds the {what} {_show(path)}, which --overwrite would "
                        "delete: choose another output folder."
                    )
    ancestor = output.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConversionError(
            f"The output folder {_show(output)} cannot be created: {_show(ancestor)} is a file. Choose another path."
        )
    return output


class _StagedFolder:
    """A temporary folder next to the output, moved into place by `commit` once complete (a rename on the same file
    system, so a user never sees a half-written folder), or deleted by `discard`."""

    def __init__(self, output: Path, overwrite: bool):
        self.output = output
        self.overwrite = overwrite
        self.path: Path | None = None
        self._created_parents: list[Path] = []

    def create(self) -> Path:
        parent = self.output.parent
        missing = []
        ancestor = parent
        while not ancestor.exists():
            missing.append(ancestor)
            ancestor = ancestor.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._created_parents = missing  # deepest first: the order to remove them in
            for _ in range(100):
                candidate = parent / f".{self.output.name}.converting-{secrets.token_hex(4)}"
                try:
                    candidate.mkdir()  # not mkdtemp: the folder keeps the usual umask permissions once in place
                except FileExistsError:
                    continue
                self.path = candidate
                return candidate
            raise FileExistsError(f"no free temporary name in {parent}")
        except OSError as error:
            self.discard()
            raise ConversionError(
                f"The output folder {_show(self.output)} cannot be written ({_reason(error)} in {_show(parent)}): "
                "choose a folder you can write to."
            ) from None

    def commit(self) -> None:
        output, staged = self.output, self.path
        try:
            if output.exists() or output.is_symlink():
                # Checked before the conversion, but the folder may have changed since.
                if output.is_symlink() or not output.is_dir():
                    raise ConversionError(f"The output {_show(output)} appeared as a file during the conversion.")
                if any(output.iterdir()):
                    if not self.overwrite:
                        raise ConversionError(
                            f"The output folder {_show(output)} was filled during the conversion: pass --overwrite or "
                            "choose another folder."
                        )
                    self._replace(output, staged)
                    return
                output.rmdir()  # os.rename cannot replace an existing folder on every platform
            os.rename(staged, output)
        except OSError as error:
            raise ConversionError(
                f"Moving the converted model into {_show(output)} failed ({_reason(error)}): nothing was changed there."
            ) from None

    def _replace(self, output: Path, staged: Path) -> None:
        # The old folder steps aside (a rename), the new one takes its place, and only then is the old one deleted.
        backup = output.parent / f".{output.name}.replaced-{secrets.token_hex(4)}"
        os.rename(output, backup)
        try:
            os.rename(staged, output)
        except BaseException:
            try:
                os.rename(backup, output)
            except OSError:
                raise ConversionError(
                    f"Replacing {_show(output)} failed and the previous folder could not be put back: it is now "
                    f"{_show(backup)}."
                ) from None
            raise
        shutil.rmtree(backup, ignore_errors=True)
        if backup.exists():
            logger.warning("The replaced folder could not be deleted completely: %s is left behind.", backup)

    def discard(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        for folder in self._created_parents:
            try:
                folder.rmdir()  # only if still empty: never remove anything that was not created here
            except OSError:
                break
        self._created_parents = []


def _check_bpe_file(bpe_path: str | os.PathLike) -> Path:
    path = _check_input_file(bpe_path, "BPE file")
    from .tokenization import load_clip_bpe_merges

    try:
        load_clip_bpe_merges(path)  # reads and parses the whole file: a broken one fails here, before any work
    except (ValueError, OSError, EOFError, zlib.error) as error:
        raise ConversionError(
            f"The BPE file {_show(path)} cannot be used ({type(error).__name__}: {_reason(error)}): pass OpenAI's "
            "bpe_simple_vocab_16e6.txt.gz."
        ) from None
    return path


# ------------------------------------------------------------------------------------------------------- conversion
def convert_official_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    variant: str | None = None,
    official_config: str | Path | dict | None = None,
    model_card: str | Callable[[CATSegConfig], str] | None = None,
    bpe_path: str | Path | None = None,
    overwrite: bool = False,
) -> CATSegForSemanticSegmentation:
    """Converts an official CAT-Seg checkpoint into a `CATSegForSemanticSegmentation` and, with `output_dir`, saves it
    (`save_pretrained`, safetensors) together with the modelling code (loadable with `trust_remote_code=True`).

    Every argument is checked before the checkpoint is read. The folder is written into a temporary folder next to
    `output_dir` and moved into place when complete: on any failure nothing is left at `output_dir`, and a folder
    that was there is untouched.

    Args:
        checkpoint: `.pth` (detectron2) or `.safetensors` file.
        output_dir: where to save the model folder; it must not exist, be empty, or (with `overwrite`) be replaced.
        variant: `"base"` or `"large"` preset for the hyperparameters that cannot be read off tensor shapes
            (inferred from the CLIP width when omitted).
        official_config: path to, or content of, an official config JSON in the fixtures' `config.json` format.
        model_card: text written as the folder's `README.md`, or a function of the converted config that returns it.
        bpe_path: CLIP BPE merges file (`bpe_simple_vocab_16e6.txt.gz`): also saves the `CATSegProcessor` (image
            processor and tokenizer), so the folder is complete for `AutoProcessor` and `pipeline(...)`.
        overwrite: replace a non-empty `output_dir` (only once the new folder is complete). It may not hold an
            input of the conversion.

    Returns:
        The converted model, in eval mode.

    Raises:
        `ConversionError`: a bad argument (the message names it and says what to do); `CheckpointMismatchError`
            (a subclass) when the tensors do not fit the model.
    """
    # 1. Every argument, before any work.
    _check_variant(variant)
    checkpoint = _check_input_file(checkpoint, "checkpoint")
    _checkpoint_format(checkpoint)
    official_config_path = Path(official_config) if isinstance(official_config, (str, os.PathLike)) else None
    official_config, config_source = _read_official_config(official_config)
    if output_dir is None and (bpe_path is not None or model_card is not None):
        raise ConversionError("bpe_path and model_card are written into the saved folder: they need an output_dir.")
    if bpe_path is not None:
        bpe_path = _check_bpe_file(bpe_path)
    staged = None
    if output_dir is not None:
        inputs = [("checkpoint", checkpoint)]
        if official_config_path is not None:
            inputs.append(("official config", official_config_path))
        if bpe_path is not None:
            inputs.append(("BPE file", bpe_path))
        staged = _StagedFolder(_check_output_dir(output_dir, overwrite, inputs), overwrite)
        staged.create()
    try:
        # 2. The conversion, in memory.
        state_dict = load_official_state_dict(checkpoint)
        config = _config_from_official(state_dict, variant, official_config, config_source)
        converted = convert_official_state_dict(state_dict, config)
        model = CATSegForSemanticSegmentation(config)
        model.load_state_dict(converted, strict=True)
        model.eval()
        if staged is None:
            return model
        # 3. The folder, written in the temporary folder and then moved into place.
        try:
            model.save_pretrained(staged.path)
            card = model_card(config) if callable(model_card) else model_card
            if card is not None:
                (staged.path / "README.md").write_text(card, encoding="utf-8")
            if bpe_path is not None:
                from .processing_catseg import CATSegProcessor

                CATSegProcessor.from_model_config(config, bpe_path=bpe_path).save_pretrained(staged.path)
        except OSError as error:
            raise ConversionError(
                f"Writing the converted model failed ({_reason(error)}): nothing was written to "
                f"{_show(staged.output)}; check the free space and permissions there."
            ) from None
        staged.commit()
        return model
    except BaseException:
        if staged is not None:
            staged.discard()
        raise

