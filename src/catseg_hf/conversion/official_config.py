"""The model configuration of an official checkpoint: CLIP read off tensor shapes, the rest from a preset or the official config JSON, validated."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any

import torch
from transformers import CLIPConfig

from ..configuration_catseg import CLIP_FINETUNE_MODES, PRESETS, CATSegConfig

from .errors import CheckpointMismatchError, ConversionError, _check_input_file, _reason, _show
from .tensor_mapping import AGGREGATOR_PREFIX, CLIP_PREFIX

logger = logging.getLogger(__name__)


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
    # The official templates (preprocessing, kept in the config for the processor built from it) set the number of
    # templates, the architecture's part of them.
    if "prompt_templates" in values:
        values["num_prompt_templates"] = len(values["prompt_templates"])
    num_templates = values.get("num_prompt_templates", 1)
    # The cost embedding's input channels are the prompt templates: check that the templates match the tensors.
    cost_key = AGGREGATOR_PREFIX + "conv1.weight"
    if cost_key in state_dict and state_dict[cost_key].ndim == 4:
        if state_dict[cost_key].shape[1] != num_templates:
            raise CheckpointMismatchError(
                f"The checkpoint's cost embedding takes {state_dict[cost_key].shape[1]} template channel(s) but the "
                f"configuration has {num_templates} prompt template(s): pass --official-config."
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
    "training_pooling_size", "inference_pooling_size", "linear_attention_eps", "prompt_templates", "num_prompt_templates", "clip_finetune",
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
