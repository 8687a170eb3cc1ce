"""CAT-Seg model configuration: the architecture (what the weights need) and the released geometries (`PRESETS`).

Preprocessing (normalisation, padding) and the prompt templates belong to the processor
([`~catseg_hf.CATSegProcessor`]); only their number, which sets the cost embedding's input channels, is here.

This file must only import torch, numpy, PIL, transformers and (relatively) our own processing files: it is copied
into saved model folders so that they load with `trust_remote_code=True` where `catseg_hf` is not installed.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import CLIPConfig, PretrainedConfig

CLIP_FINETUNE_MODES = ("attention", "frozen", "full")
# Preprocessing settings that configs written before the processor owned them carry. They are accepted and kept as
# attributes (so such folders load and re-save unchanged); only `CATSegProcessor.from_model_config` reads them.
LEGACY_PREPROCESSING_KEYS = ("image_mean", "image_std", "size_divisibility", "prompt_templates")

# The geometry of the released models (with `_clip_config_for`): the config's defaults are the base one, and
# everything else that needs 384/336 or the guidance taps reads it here.
PRESETS: dict[str, dict[str, Any]] = {
    "base": dict(clip_resolution=384, guidance_layer_indices=[3, 7]),
    "large": dict(clip_resolution=336, guidance_layer_indices=[7, 15]),
}


class CATSegConfig(PretrainedConfig):
    r"""
    Configuration of a [`CATSegForSemanticSegmentation`]: a CLIP model (held as a nested [`~transformers.CLIPConfig`]) plus the
    cost-aggregation head of CAT-Seg (Cho et al., CVPR 2024).

    The defaults are those of the released **base** model (CLIP ViT-B/16 run at 384 px); use
    [`CATSegConfig.from_preset`] for the released geometries.

    Args:
        clip_config (`dict` or `CLIPConfig`, *optional*):
            The CLIP backbone. Vision and text towers are CLIP's; the last vision block is run in CAT-Seg's dense mode.
        clip_resolution (`int`, *optional*, defaults to 384):
            Side of the square image the CLIP vision tower sees (384 for ViT-B/16, 336 for ViT-L/14@336).
        guidance_layer_indices (`list[int]`, *optional*, defaults to `[3, 7]`):
            0-indexed CLIP vision blocks whose outputs feed the decoder guidance (must not be the last block).
        decoder_guidance_dims (`list[int]`, *optional*, defaults to `[256, 128]`):
            Output channels of the two transposed convolutions that upsample the guidance taps (x2 then x4).
        decoder_guidance_proj_dims (`list[int]`, *optional*, defaults to `[32, 16]`):
            Channels of the projected decoder guidance (3x3 conv + ReLU) concatenated in each decoder stage.
        decoder_dims (`list[int]`, *optional*, defaults to `[64, 32]`):
            Output channels of the two upsampling decoder stages.
        hidden_dim (`int`, *optional*, defaults to 128):
            Channels of the cost embedding that the aggregation layers work on.
        appearance_guidance_proj_dim (`int`, *optional*, defaults to 128):
            Channels of the projected appearance (dense CLIP image) guidance used by the spatial aggregation.
        text_guidance_proj_dim (`int`, *optional*, defaults to 128):
            Channels of the projected text guidance used by the class aggregation.
        num_aggregation_layers (`int`, *optional*, defaults to 2):
            Number of (spatial aggregation, class aggregation) layers.
        num_attention_heads (`int`, *optional*, defaults to 4):
            Heads of both the Swin (spatial) and the linear (class) attention.
        window_size (`int`, *optional*, defaults to 12):
            Swin window side; the second block of each spatial aggregation is shifted by `window_size // 2`.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Hidden-size ratio of the MLPs in both aggregations.
        cost_embedding_kernel_size (`int`, *optional*, defaults to 7):
            Kernel of the convolution that embeds the cost volume (one channel per prompt template).
        pad_len (`int`, *optional*, defaults to 256):
            Length the class sequence is padded to (learned padding tokens) in the class aggregation. With more classes
            than `pad_len`, only the `pad_len` classes of highest cost are aggregated; the others get logit -100.
        training_pooling_size (`list[int]`, *optional*, defaults to `[2, 2]`):
            Average pooling before the class aggregation while `model.training` is true.
        inference_pooling_size (`list[int]`, *optional*, defaults to `[1, 1]`):
            The same pooling in evaluation mode (the official evaluation uses no pooling).
        linear_attention_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon in the normaliser of the linear attention.
        num_prompt_templates (`int`, *optional*, defaults to 1):
            Prompt templates per class name: the input channels of the cost embedding. The templates themselves are
            the processor's. Derived from a legacy `prompt_templates` list when only that is given.
        clip_finetune (`str`, *optional*, defaults to `"attention"`):
            Which CLIP parameters train: `"attention"` (query and value projection weights of every attention block of
            both towers, the released setting), `"frozen"` (none) or `"full"` (all).
        ignore_index (`int`, *optional*, defaults to 255):
            Label id of ignored pixels (they still count in the loss, with an all-zero target, as in the reference).
        class_chunk_size (`int`, *optional*, defaults to 64):
            The per-class parts of the aggregator (spatial aggregation, decoder) run over at most this many classes
            at a time, and views are aggregated one at a time, which bounds memory; results do not depend on it.
            0 disables chunking. Gradient-free inference on CPU uses smaller tiles still, sized for the caches.
        text_batch_size (`int`, *optional*, defaults to 256):
            Class-name prompts are encoded by the text tower in batches of this size.
        default_class_input_ids (`list`, *optional*):
            Token ids `(T, P, L)` of a default vocabulary (whose names are `id2label`), used when a call gives neither
            `input_ids` nor `class_embeddings` (e.g. by transformers' `image-segmentation` pipeline).
        default_class_attention_mask (`list`, *optional*):
            The attention mask of `default_class_input_ids`.

    Configs saved before the processor owned preprocessing also hold `image_mean`, `image_std`,
    `size_divisibility` and `prompt_templates`: they still load, are kept as attributes (see
    `LEGACY_PREPROCESSING_KEYS`), and are read only by [`~catseg_hf.CATSegProcessor.from_model_config`].
    """

    model_type = "catseg"
    # Saved folders carry this file and an `auto_map`, so they load with `trust_remote_code=True` anywhere.
    _auto_class = "AutoConfig"
    sub_configs = {"clip_config": CLIPConfig}

    def __init__(
        self,
        clip_config: dict | CLIPConfig | None = None,
        clip_resolution: int = PRESETS["base"]["clip_resolution"],
        guidance_layer_indices: list[int] | None = None,
        decoder_guidance_dims: list[int] | None = None,
        decoder_guidance_proj_dims: list[int] | None = None,
        decoder_dims: list[int] | None = None,
        hidden_dim: int = 128,
        appearance_guidance_proj_dim: int = 128,
        text_guidance_proj_dim: int = 128,
        num_aggregation_layers: int = 2,
        num_attention_heads: int = 4,
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        cost_embedding_kernel_size: int = 7,
        pad_len: int = 256,
        training_pooling_size: list[int] | tuple[int, int] = (2, 2),
        inference_pooling_size: list[int] | tuple[int, int] = (1, 1),
        linear_attention_eps: float = 1e-6,
        num_prompt_templates: int | None = None,
        clip_finetune: str = "attention",
        ignore_index: int = 255,
        class_chunk_size: int = 64,
        text_batch_size: int = 256,
        default_class_input_ids: list | None = None,
        default_class_attention_mask: list | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ):
        if clip_config is None:
            clip_config = _clip_config_for("base")
        elif isinstance(clip_config, dict):
            clip_config = CLIPConfig(**clip_config)
        self.clip_config = clip_config

        self.clip_resolution = int(clip_resolution)
        if guidance_layer_indices is None:
            guidance_layer_indices = PRESETS["base"]["guidance_layer_indices"]
        self.guidance_layer_indices = list(guidance_layer_indices)
        self.decoder_guidance_dims = list(decoder_guidance_dims if decoder_guidance_dims is not None else [256, 128])
        self.decoder_guidance_proj_dims = list(
            decoder_guidance_proj_dims if decoder_guidance_proj_dims is not None else [32, 16]
        )
        self.decoder_dims = list(decoder_dims if decoder_dims is not None else [64, 32])
        self.hidden_dim = hidden_dim
        self.appearance_guidance_proj_dim = appearance_guidance_proj_dim
        self.text_guidance_proj_dim = text_guidance_proj_dim
        self.num_aggregation_layers = num_aggregation_layers
        self.num_attention_heads = num_attention_heads
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.cost_embedding_kernel_size = cost_embedding_kernel_size
        self.pad_len = pad_len
        self.training_pooling_size = list(training_pooling_size)
        self.inference_pooling_size = list(inference_pooling_size)
        self.linear_attention_eps = linear_attention_eps
        for key in LEGACY_PREPROCESSING_KEYS:
            if key in kwargs and kwargs[key] is None:
                del kwargs[key]
        legacy_templates = kwargs.get("prompt_templates")
        if legacy_templates is not None:
            _check_legacy_templates(legacy_templates)
            kwargs["prompt_templates"] = list(legacy_templates)
            if num_prompt_templates is None:
                num_prompt_templates = len(legacy_templates)
            elif num_prompt_templates != len(legacy_templates):
                raise ValueError(
                    f"num_prompt_templates={num_prompt_templates} but the legacy prompt_templates list has "
                    f"{len(legacy_templates)} entries; give one of them, or matching values."
                )
        self.num_prompt_templates = 1 if num_prompt_templates is None else num_prompt_templates
        self.clip_finetune = clip_finetune
        self.ignore_index = ignore_index
        self.class_chunk_size = class_chunk_size
        self.text_batch_size = text_batch_size
        self.default_class_input_ids = default_class_input_ids
        self.default_class_attention_mask = default_class_attention_mask
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate()

    # ------------------------------------------------------------------ helpers
    @property
    def projection_dim(self) -> int:
        """CLIP joint embedding dimension C (text and dense image embeddings)."""
        return self.clip_config.projection_dim

    @property
    def vision_config(self) -> PretrainedConfig:
        """The CLIP vision tower's config (`clip_config.vision_config`), under the name transformers' generic code
        looks for; `get_image_features` returns that tower's hidden states. Read-only: it is saved with `clip_config`."""
        return self.clip_config.vision_config

    @property
    def vision_width(self) -> int:
        return self.clip_config.vision_config.hidden_size

    @property
    def feature_resolution(self) -> tuple[int, int]:
        """The CLIP patch grid (h, w) at `clip_resolution`."""
        side = self.clip_resolution // self.clip_config.vision_config.patch_size
        return (side, side)

    @property
    def logits_resolution(self) -> tuple[int, int]:
        """Spatial size of the aggregator logits: 2 ** len(decoder_dims) times the patch grid."""
        h, w = self.feature_resolution
        factor = 2 ** len(self.decoder_dims)
        return (h * factor, w * factor)

    def validate(self) -> None:
        """Checks the combinations the model cannot run with, with messages saying what to change."""
        if self.clip_finetune not in CLIP_FINETUNE_MODES:
            raise ValueError(f"clip_finetune must be one of {CLIP_FINETUNE_MODES}, got {self.clip_finetune!r}.")
        num_vision_layers = self.clip_config.vision_config.num_hidden_layers
        if len(self.guidance_layer_indices) != 2:
            raise ValueError(
                f"guidance_layer_indices needs exactly two CLIP vision blocks (one per decoder stage), got "
                f"{self.guidance_layer_indices}."
            )
        for index in self.guidance_layer_indices:
            if not 0 <= index < num_vision_layers - 1:
                raise ValueError(
                    f"guidance layer {index} is out of range: taps must be among the first {num_vision_layers - 1} "
                    f"CLIP vision blocks (the last block runs in dense mode)."
                )
        if not (len(self.decoder_dims) == len(self.decoder_guidance_dims) == len(self.decoder_guidance_proj_dims) == 2):
            raise ValueError(
                "decoder_dims, decoder_guidance_dims and decoder_guidance_proj_dims must each have two entries "
                f"(two decoder stages), got {self.decoder_dims}, {self.decoder_guidance_dims}, "
                f"{self.decoder_guidance_proj_dims}."
            )
        if isinstance(self.num_prompt_templates, bool) or not isinstance(self.num_prompt_templates, int) or (
            self.num_prompt_templates < 1
        ):
            raise ValueError(f"num_prompt_templates must be a positive int, got {self.num_prompt_templates!r}.")
        if self.clip_resolution % self.clip_config.vision_config.patch_size:
            raise ValueError(
                f"clip_resolution {self.clip_resolution} is not a multiple of the CLIP patch size "
                f"{self.clip_config.vision_config.patch_size}."
            )
        for name in ("training_pooling_size", "inference_pooling_size"):
            value = getattr(self, name)
            if len(value) != 2 or min(value) < 1:
                raise ValueError(f"{name} must be two positive ints, got {value}.")

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if isinstance(self.clip_config, PretrainedConfig):
            output["clip_config"] = self.clip_config.to_dict()
        return output

    @classmethod
    def from_preset(cls, variant: str, **kwargs: Any) -> "CATSegConfig":
        """The configuration of a released CAT-Seg model.

        Args:
            variant (`str`):
                `"base"` (CLIP ViT-B/16 at 384 px, guidance taps [3, 7]) or `"large"` (CLIP ViT-L/14@336 at
                336 px, taps [7, 15]).
            kwargs (`Any`):
                Overrides of any other field.
        """
        if variant not in PRESETS:
            raise ValueError(f"Unknown CAT-Seg variant {variant!r}; choose one of {sorted(PRESETS)}.")
        values = copy.deepcopy(PRESETS[variant])
        values["clip_config"] = _clip_config_for(variant)
        values.update(kwargs)
        return cls(**values)


def _check_legacy_templates(templates: Any) -> None:
    if isinstance(templates, str) or not templates or any(not isinstance(t, str) or "{}" not in t for t in templates):
        raise ValueError(f"prompt_templates must be a non-empty list of strings with a '{{}}', got {templates!r}.")


def _clip_config_for(variant: str) -> CLIPConfig:
    """CLIP configs of the two OpenAI backbones of the released models (heads = width // 64, QuickGELU)."""
    if variant == "base":
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
        vision = dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16,
            image_size=224,
        )
        projection_dim = 512
    elif variant == "large":
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        vision = dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
            image_size=336,
        )
        projection_dim = 768
    else:
        raise ValueError(f"Unknown CAT-Seg variant {variant!r}; choose 'base' or 'large'.")
    text.update(
        vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0, projection_dim=projection_dim,
    )
    vision.update(hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=projection_dim)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def released_variant(config: Any) -> str | None:
    """`"base"` or `"large"` when `config` has the geometry of that released model (CLIP towers' widths and depths,
    patch size, CLIP resolution), else None. Weights are not inspected."""
    try:
        vision, text = config.clip_config.vision_config, config.clip_config.text_config
        geometry = (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, text.hidden_size, config.clip_resolution)
    except AttributeError:
        return None
    for variant, values in PRESETS.items():
        preset_clip = _clip_config_for(variant)
        preset_vision, preset_text = preset_clip.vision_config, preset_clip.text_config
        reference = (
            preset_vision.hidden_size,
            preset_vision.num_hidden_layers,
            preset_vision.patch_size,
            preset_text.hidden_size,
            values["clip_resolution"],
        )
        if geometry == reference:
            return variant
    return None


__all__ = ["CATSegConfig", "CLIP_FINETUNE_MODES", "LEGACY_PREPROCESSING_KEYS", "PRESETS", "released_variant"]
