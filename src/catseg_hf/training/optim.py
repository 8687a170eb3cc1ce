"""Optimizer parameter groups of the official CAT-Seg training recipe.

The official recipe (CAT-Seg `train_net.py`, `Trainer.build_optimizer`, with the `configs/config.yaml` solver
settings) builds AdamW over every parameter that has `requires_grad`, visiting each module's *own* parameters
(`named_parameters(recurse=False)`) and giving each one:

- learning rate `BASE_LR` (2e-4), times `CLIP_MULTIPLIER` (0.01) when the owning module belongs to the CLIP model
  (the official rule is `"clip_model" in module_name`; here CLIP is `model.clip`). The official rule also scales
  modules named `"backbone"` by `BACKBONE_MULTIPLIER`, but the released models have no such module (their backbone is
  `None`), so that rule never applies and is not reproduced;
- weight decay `WEIGHT_DECAY` (1e-4), except
  - 0.0 for parameters whose name contains `relative_position_bias_table` or `absolute_pos_embed`,
  - `WEIGHT_DECAY_NORM` (detectron2's default 0.0) for the parameters of normalisation layers (BatchNorm*,
    SyncBatchNorm, GroupNorm, InstanceNorm*, LayerNorm, LocalResponseNorm),
  - `WEIGHT_DECAY_EMBED` (0.0 in CAT-Seg's config) for the parameters of `nn.Embedding` modules.

  Biases of linear and convolution layers *do* get weight decay (unlike `transformers.Trainer`'s default rule).

Which CLIP parameters take part is decided by `requires_grad`, set from the model's `config.clip_finetune` by
`apply_clip_finetune_policy` where training is set up (`build_model`, `CATSegTrainer`): in the released
`"attention"` mode only the query and value projection weights of the CLIP attention blocks train. Whole-model gradient clipping (`CLIP_GRADIENTS.CLIP_TYPE: full_model`,
`CLIP_VALUE: 0.01`) corresponds to `TrainingArguments.max_grad_norm=0.01`, and `WarmupCosineLR` without warm-up to
`lr_scheduler_type="cosine"` with `warmup_steps=0`.

The official code makes one parameter group per tensor; this module merges tensors with the same
(learning rate, weight decay) into one group, which is the same optimisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "CLIP_FINETUNE_MODES",
    "apply_clip_finetune_policy",
    "NORM_MODULE_TYPES",
    "NO_DECAY_PARAMETER_NAME_PATTERNS",
    "OFFICIAL_CLIP_LR_MULTIPLIER",
    "ParameterRule",
    "build_optimizer",
    "classify_parameters",
    "count_parameters",
    "get_parameter_groups",
]

# The module types whose parameters get `weight_decay_norm` in the official recipe (detectron2's list).
NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# Parameter-name fragments that never get weight decay (Swin position tables; none exist in CAT-Seg's aggregator,
# kept so that the rule is the official one for any model this is applied to).
NO_DECAY_PARAMETER_NAME_PATTERNS: tuple[str, ...] = ("relative_position_bias_table", "absolute_pos_embed")
OFFICIAL_CLIP_LR_MULTIPLIER = 0.01


@dataclass(frozen=True)
class ParameterRule:
    """How one trainable parameter is optimised.

    Attributes:
        name (`str`):
            The parameter's full name in the model.
        is_clip (`bool`):
            Whether it belongs to the CLIP model (learning rate times the CLIP multiplier).
        decay_kind (`str`):
            `"default"`, `"norm"`, `"embedding"` or `"no_decay_name"` -- which weight-decay rule applies.
    """

    name: str
    is_clip: bool
    decay_kind: str


CLIP_FINETUNE_MODES = ("attention", "frozen", "full")
# The CLIP parameters the released "attention" mode trains.
ATTENTION_FINETUNE_SUFFIXES = ("self_attn.q_proj.weight", "self_attn.v_proj.weight")


def apply_clip_finetune_policy(model: nn.Module, mode: str | None = None) -> None:
    """Sets which CLIP parameters of a CAT-Seg model train (`requires_grad`), from `model.config.clip_finetune`
    unless `mode` is given (which is then written to the config, so that it is saved with the model).

    - `"attention"`: the query and value projection weights of every attention block of both CLIP towers (the
      released setting);
    - `"frozen"`: none;
    - `"full"`: all.

    The aggregator and the guidance upsamplers always train. Parameters the model never uses
    (`model.parameters_without_gradient`, e.g. the query projection of the last vision block, which runs in dense
    mode) never train in any mode, so that distributed training needs no `find_unused_parameters`.
    """
    mode = mode or model.config.clip_finetune
    if mode not in CLIP_FINETUNE_MODES:
        raise ValueError(f"Unknown CLIP fine-tuning mode {mode!r}; choose one of {CLIP_FINETUNE_MODES}.")
    model.config.clip_finetune = mode
    unused = set(getattr(model, "parameters_without_gradient", ()))
    for name, parameter in model.named_parameters():
        if name in unused:
            parameter.requires_grad_(False)
        elif not _is_clip_module(name.rsplit(".", 1)[0], "clip"):
            parameter.requires_grad_(True)
        elif mode == "full":
            parameter.requires_grad_(True)
        elif mode == "frozen":
            parameter.requires_grad_(False)
        else:
            parameter.requires_grad_(name.endswith(ATTENTION_FINETUNE_SUFFIXES))


def _is_clip_module(module_name: str, clip_module_name: str) -> bool:
    return module_name == clip_module_name or module_name.startswith(clip_module_name + ".")


def classify_parameters(model: nn.Module, clip_module_name: str = "clip") -> list[tuple[ParameterRule, nn.Parameter]]:
    """Every trainable parameter of `model` once, with the official rule that applies to it.

    Args:
        model (`nn.Module`):
            The model (a `CATSegModel` or anything with a CLIP sub-module).
        clip_module_name (`str`, *optional*, defaults to `"clip"`):
            Name of the CLIP sub-module whose parameters get the CLIP learning-rate multiplier.

    Returns:
        `(rule, parameter)` pairs in module order; parameters with `requires_grad=False` are left out, and a
        parameter shared by several modules is listed once (under the first module that owns it).
    """
    seen: set[int] = set()
    result = []
    for module_name, module in model.named_modules():
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            # The same precedence as the official code: the later matching rule wins.
            decay_kind = "default"
            if any(pattern in parameter_name for pattern in NO_DECAY_PARAMETER_NAME_PATTERNS):
                decay_kind = "no_decay_name"
            if isinstance(module, NORM_MODULE_TYPES):
                decay_kind = "norm"
            if isinstance(module, nn.Embedding):
                decay_kind = "embedding"
            full_name = f"{module_name}.{parameter_name}" if module_name else parameter_name
            rule = ParameterRule(full_name, _is_clip_module(module_name, clip_module_name), decay_kind)
            result.append((rule, parameter))
    return result


def get_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    clip_lr_multiplier: float = OFFICIAL_CLIP_LR_MULTIPLIER,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    clip_module_name: str = "clip",
) -> list[dict[str, Any]]:
    """Optimizer parameter groups following the official CAT-Seg `build_optimizer` (see the module docstring).

    Args:
        model (`nn.Module`):
            The model; only parameters with `requires_grad=True` are included, so call
            `apply_clip_finetune_policy(model)` (done by `build_model` and `CATSegTrainer`) first.
        learning_rate (`float`):
            Base learning rate (official: 2e-4).
        weight_decay (`float`):
            Weight decay of ordinary parameters (official: 1e-4).
        clip_lr_multiplier (`float`, *optional*, defaults to `OFFICIAL_CLIP_LR_MULTIPLIER`):
            Learning-rate factor of CLIP parameters (official: 0.01).
        weight_decay_norm (`float`, *optional*, defaults to `0.0`):
            Weight decay of normalisation-layer parameters (official: 0.0).
        weight_decay_embed (`float`, *optional*, defaults to `0.0`):
            Weight decay of `nn.Embedding` parameters (official: 0.0).
        clip_module_name (`str`, *optional*, defaults to `"clip"`):
            Name of the CLIP sub-module.

    Returns:
        A list of dicts for `torch.optim` (keys `params`, `lr`, `weight_decay`, plus `name` and `param_names`
        for inspection), ordered so that the first group is the one at the base learning rate (the one
        `transformers.Trainer` logs as `learning_rate`). Empty groups are left out.

    Raises:
        ValueError: if the model has no trainable parameter, or a setting is negative.
    """
    for label, value in (
        ("learning_rate", learning_rate),
        ("weight_decay", weight_decay),
        ("clip_lr_multiplier", clip_lr_multiplier),
        ("weight_decay_norm", weight_decay_norm),
        ("weight_decay_embed", weight_decay_embed),
    ):
        if value < 0:
            raise ValueError(f"{label} must be >= 0, got {value}.")
    decay_for_kind = {
        "default": weight_decay,
        "no_decay_name": 0.0,
        "norm": weight_decay_norm,
        "embedding": weight_decay_embed,
    }
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for rule, parameter in classify_parameters(model, clip_module_name):
        decay = float(decay_for_kind[rule.decay_kind])
        key = (rule.is_clip, decay)
        if key not in groups:
            lr = learning_rate * (clip_lr_multiplier if rule.is_clip else 1.0)
            name = f"{'clip' if rule.is_clip else 'head'}_{'decay' if decay > 0 else 'no_decay'}"
            groups[key] = {"name": name, "params": [], "param_names": [], "lr": lr, "weight_decay": decay}
        groups[key]["params"].append(parameter)
        groups[key]["param_names"].append(rule.name)
    if not groups:
        raise ValueError(
            "The model has no trainable parameter (every requires_grad is False). Check config.clip_finetune and that "
            "the aggregator was not frozen."
        )
    # Head (base learning rate) groups first, decayed before non-decayed; CLIP groups after.
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], -item[0][1]))
    return [group for _, group in ordered]


def count_parameters(groups: list[dict[str, Any]]) -> dict[str, int]:
    """Number of scalar parameters per group name (for logging)."""
    return {group["name"]: sum(int(p.numel()) for p in group["params"]) for group in groups}


def _strip_names(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # `param_names` is informative only; torch >= 2.4 also understands it, but keeping the lists of strings out of
    # optimizer checkpoints avoids needless differences between versions.
    return [{key: value for key, value in group.items() if key != "param_names"} for group in groups]


def build_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer],
    optimizer_kwargs: dict[str, Any],
    weight_decay: float,
    clip_lr_multiplier: float = OFFICIAL_CLIP_LR_MULTIPLIER,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
) -> torch.optim.Optimizer:
    """An optimizer of class `optimizer_cls` over the official parameter groups.

    `optimizer_kwargs` must hold `lr` (the base learning rate), as returned by
    `transformers.Trainer.get_optimizer_cls_and_kwargs`; its other entries (betas, eps, fused, ...) are passed on.
    """
    if "lr" not in optimizer_kwargs:
        raise ValueError("optimizer_kwargs must contain the base learning rate 'lr'.")
    kwargs = dict(optimizer_kwargs)
    groups = get_parameter_groups(
        model,
        learning_rate=kwargs["lr"],
        weight_decay=weight_decay,
        clip_lr_multiplier=clip_lr_multiplier,
        weight_decay_norm=weight_decay_norm,
        weight_decay_embed=weight_decay_embed,
    )
    kwargs.pop("weight_decay", None)  # every group carries its own
    return optimizer_cls(_strip_names(groups), **kwargs)

