"""Conversion of official CAT-Seg (detectron2) checkpoints into `CATSegForSemanticSegmentation` folders.

The official checkpoints hold OpenAI-CLIP tensors under `sem_seg_head.predictor.clip_model.` (each attention with
separate q/k/v weights but one concatenated in-projection bias), the aggregator under
`sem_seg_head.predictor.transformer.` and the two guidance upsamplers at the top level.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig

from .configuration_catseg import CATSegConfig
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


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not map one to one onto the model's parameters."""


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads an official checkpoint: a detectron2 `.pth` (`{"model": state_dict}` or a bare state dict, read with
    `weights_only=True`) or a `.safetensors` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "model" in checkpoint and isinstance(checkpoint["model"], dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(checkpoint).__name__}).")
    return checkpoint


def infer_clip_config(state_dict: dict[str, torch.Tensor]) -> CLIPConfig:
    """CLIP dimensions read off the official tensors' shapes (heads = width // 64, as in OpenAI CLIP)."""

    def tensor(name: str) -> torch.Tensor:
        key = CLIP_PREFIX + name
        if key not in state_dict:
            raise CheckpointMismatchError(f"The checkpoint has no {key!r}: is it an official CAT-Seg checkpoint?")
        return state_dict[key]

    def num_blocks(prefix: str) -> int:
        pattern = re.compile(re.escape(CLIP_PREFIX + prefix) + r"(\d+)\.")
        ids = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
        return max(ids) + 1

    vision_width, _, patch, _ = tensor("visual.conv1.weight").shape
    vision_positions = tensor("visual.positional_embedding").shape[0]
    grid = int(round((vision_positions - 1) ** 0.5))
    projection_dim = tensor("visual.proj").shape[1]
    vocab_size, text_width = tensor("token_embedding.weight").shape
    context_length = tensor("positional_embedding").shape[0]
    text_mlp = tensor("transformer.resblocks.0.mlp.c_fc.weight").shape[0]
    vision_mlp = tensor("visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0]
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=text_width,
        intermediate_size=text_mlp,
        num_hidden_layers=num_blocks("transformer.resblocks."),
        num_attention_heads=max(text_width // 64, 1),
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
        num_attention_heads=max(vision_width // 64, 1),
        patch_size=patch,
        image_size=grid * patch,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def config_from_official(
    state_dict: dict[str, torch.Tensor], variant: str | None = None, official_config: dict[str, Any] | None = None
) -> CATSegConfig:
    """A `CATSegConfig` for an official checkpoint: CLIP dims from the tensors; the other hyperparameters from the
    `variant` preset, overridden by an official config JSON (the format of the fixtures' `config.json`) when given."""
    clip_config = infer_clip_config(state_dict)
    if variant is None:
        variant = "large" if clip_config.vision_config.hidden_size >= 1024 else "base"
    preset = CATSegConfig.from_preset(variant)
    values = {k: v for k, v in preset.to_dict().items() if k in _CONFIG_FIELDS}
    if official_config is not None:
        values.update(_fields_from_official_config(official_config))
    values["clip_config"] = clip_config
    # The cost embedding's input channels are the prompt templates: check that the templates match the tensors.
    cost_key = AGGREGATOR_PREFIX + "conv1.weight"
    if cost_key in state_dict and state_dict[cost_key].shape[1] != len(values["prompt_templates"]):
        raise CheckpointMismatchError(
            f"The checkpoint's cost embedding takes {state_dict[cost_key].shape[1]} template channel(s) but the "
            f"configuration has {len(values['prompt_templates'])} prompt template(s); pass --official-config."
        )
    return CATSegConfig(**values)


_CONFIG_FIELDS = {
    "clip_resolution", "guidance_layer_indices", "decoder_guidance_dims", "decoder_guidance_proj_dims", "decoder_dims",
    "hidden_dim", "appearance_guidance_proj_dim", "text_guidance_proj_dim", "num_aggregation_layers",
    "num_attention_heads", "window_size", "mlp_ratio", "cost_embedding_kernel_size", "pad_len",
    "training_pooling_size", "inference_pooling_size", "linear_attention_eps", "prompt_templates", "clip_finetune",
    "ignore_index", "image_mean", "image_std", "size_divisibility",
}


def _fields_from_official_config(official: dict[str, Any]) -> dict[str, Any]:
    """Maps the fixture-format official configuration (see `official_tiny/config.json`) to our field names."""
    values: dict[str, Any] = {}
    aggregator = official.get("aggregator", {})
    renames = {
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
    for theirs, ours in renames.items():
        if theirs in aggregator:
            values[ours] = aggregator[theirs]
    if aggregator.get("attention_type", "linear") != "linear":
        raise ValueError(f"Only linear class attention is supported, the config asks for {aggregator['attention_type']!r}.")
    pooling = official.get("pooling_sizes", {})
    if "train" in pooling:
        values["training_pooling_size"] = list(pooling["train"])
    if "eval" in pooling:
        values["inference_pooling_size"] = list(pooling["eval"])
    if "templates" in official:
        values["prompt_templates"] = list(official["templates"])
    cfg = official.get("official_cfg", {})
    if "MODEL.SEM_SEG_HEAD.CLIP_FINETUNE" in cfg:
        values["clip_finetune"] = cfg["MODEL.SEM_SEG_HEAD.CLIP_FINETUNE"]
    if "MODEL.SEM_SEG_HEAD.IGNORE_VALUE" in cfg:
        values["ignore_index"] = cfg["MODEL.SEM_SEG_HEAD.IGNORE_VALUE"]
    if "MODEL.CLIP_PIXEL_MEAN" in cfg:
        values["image_mean"] = list(cfg["MODEL.CLIP_PIXEL_MEAN"])
    if "MODEL.CLIP_PIXEL_STD" in cfg:
        values["image_std"] = list(cfg["MODEL.CLIP_PIXEL_STD"])
    if "MODEL.MASK_FORMER.SIZE_DIVISIBILITY" in cfg:
        values["size_divisibility"] = cfg["MODEL.MASK_FORMER.SIZE_DIVISIBILITY"]
    glue = official.get("catseg", {})
    if "clip_resolution" in glue:
        resolution = glue["clip_resolution"]
        values["clip_resolution"] = int(resolution[0] if isinstance(resolution, (list, tuple)) else resolution)
    if "layer_indexes" in glue:
        values["guidance_layer_indices"] = list(glue["layer_indexes"])
    if "upsample1" in glue and "upsample2" in glue:
        values["decoder_guidance_dims"] = [glue["upsample1"]["out_channels"], glue["upsample2"]["out_channels"]]
    if "size_divisibility" in glue:
        values["size_divisibility"] = glue["size_divisibility"]
    return values


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


def convert_official_state_dict(state_dict: dict[str, torch.Tensor], config: CATSegConfig) -> dict[str, torch.Tensor]:
    """Maps every official tensor to our parameter names.

    Raises `CheckpointMismatchError` naming the keys when a tensor has no place in the model or a model parameter
    gets no tensor. The persistent Swin `attn_mask` buffers are checked against the masks we compute and dropped.
    """
    converted: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(CLIP_PREFIX):
            name = key[len(CLIP_PREFIX):]
            if name == "text_projection":
                converted["clip.text_projection.weight"] = value.t().contiguous()
                continue
            if name == "visual.proj":
                converted["clip.visual_projection.weight"] = value.t().contiguous()
                continue
            match = re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.(q|k|v)_proj_weight$", name)
            if match:
                tower = "vision_model" if match.group(1) else "text_model"
                converted[f"clip.{tower}.encoder.layers.{match.group(2)}.self_attn.{match.group(3)}_proj.weight"] = value
                continue
            match = re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_bias$", name)
            if match:
                tower = "vision_model" if match.group(1) else "text_model"
                prefix = f"clip.{tower}.encoder.layers.{match.group(2)}.self_attn."
                for projection, chunk in zip("qkv", value.chunk(3)):
                    converted[f"{prefix}{projection}_proj.bias"] = chunk.clone()
                continue
            match = re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$", name)
            if match:  # checkpoints saved with fused q/k/v weights
                tower = "vision_model" if match.group(1) else "text_model"
                prefix = f"clip.{tower}.encoder.layers.{match.group(2)}.self_attn."
                for projection, chunk in zip("qkv", value.chunk(3)):
                    converted[f"{prefix}{projection}_proj.weight"] = chunk.clone()
                continue
            ours = _rename_clip_key(name)
            if ours is None:
                unmapped.append(key)
            else:
                converted[ours] = value
        elif key.startswith(AGGREGATOR_PREFIX):
            name = key[len(AGGREGATOR_PREFIX):]
            if re.match(r"^layers\.\d+\.swin_block\.block_\d\.attn_mask$", name):
                _check_swin_mask(key, value, config)
                continue
            ours = _rename_aggregator_key(name)
            if ours is None:
                unmapped.append(key)
                continue
            if ours.endswith(("padding_token", "padding_guidance")):
                value = value.reshape(-1)
            converted[ours] = value
        elif key.startswith(("upsample1.", "upsample2.")):
            index = int(key[len("upsample")]) - 1
            converted[f"guidance_upsamplers.{index}.{key.split('.', 1)[1]}"] = value
        elif key in ("pixel_mean", "pixel_std", "clip_pixel_mean", "clip_pixel_std"):
            continue  # normalisation constants, held by the config / image processor
        else:
            unmapped.append(key)

    expected = _expected_keys(config)
    missing = sorted(expected - set(converted))
    extra = sorted(set(converted) - expected)
    if unmapped or missing or extra:
        lines = []
        if unmapped:
            lines.append(f"{len(unmapped)} checkpoint tensor(s) with no place in CATSegForSemanticSegmentation: {unmapped}")
        if extra:
            lines.append(f"{len(extra)} mapped name(s) the model does not have: {extra}")
        if missing:
            lines.append(f"{len(missing)} model parameter(s) missing from the checkpoint: {missing}")
        raise CheckpointMismatchError("The checkpoint does not match the model.\n" + "\n".join(lines))
    return converted


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


def _expected_keys(config: CATSegConfig) -> set[str]:
    with torch.device("meta"):
        model = CATSegForSemanticSegmentation(config)
    return set(model.state_dict().keys())


def convert_official_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    variant: str | None = None,
    official_config: str | Path | dict | None = None,
    model_card: str | None = None,
) -> CATSegForSemanticSegmentation:
    """Converts an official CAT-Seg checkpoint into a `CATSegForSemanticSegmentation` and, with `output_dir`, saves it
    (`save_pretrained`, safetensors) together with the modelling code (loadable with `trust_remote_code=True`).

    Args:
        checkpoint: `.pth` (detectron2) or `.safetensors` file.
        output_dir: where to save the model folder.
        variant: `"base"` or `"large"` preset for the hyperparameters that cannot be read off tensor shapes
            (inferred from the CLIP width when omitted).
        official_config: path to, or content of, an official config JSON in the fixtures' `config.json` format.
        model_card: text written as the folder's `README.md`.
    """
    state_dict = load_official_state_dict(checkpoint)
    if isinstance(official_config, (str, Path)):
        official_config = json.loads(Path(official_config).read_text())
    config = config_from_official(state_dict, variant=variant, official_config=official_config)
    converted = convert_official_state_dict(state_dict, config)
    model = CATSegForSemanticSegmentation(config)
    model.load_state_dict(converted, strict=True)
    model.eval()
    if output_dir is not None:
        output_dir = Path(output_dir)
        model.save_pretrained(output_dir)
        if model_card is not None:
            (output_dir / "README.md").write_text(model_card)
    return model
