"""The official checkpoint's tensor names and layout mapped onto `CATSegForSemanticSegmentation`'s, with shape checks."""

from __future__ import annotations

import logging
import math
import re

import torch

from ..configuration_catseg import CATSegConfig
from ..modeling_catseg import CATSegForSemanticSegmentation, shifted_window_attention_mask

from .errors import CheckpointMismatchError, _some

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
    # The checkpoint stores the reference's -100 where ours holds -inf (see SHIFTED_WINDOW_MASK_VALUE): compare
    # which token pairs are masked.
    if value.shape != expected.shape or not torch.equal(value != 0, expected != 0):
        raise CheckpointMismatchError(
            f"{key}: the stored shifted-window mask {tuple(value.shape)} differs from the one for a "
            f"{height}x{width} grid with window {window}; is clip_resolution right?"
        )
