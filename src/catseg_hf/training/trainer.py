"""`transformers.Trainer` for CAT-Seg: the official optimizer parameter groups and streaming mean-IoU evaluation.

Everything else (checkpointing, resuming, logging to `report_to`, progress bars, distributed data parallelism through
accelerate) is `Trainer`'s own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.utils import logging

from .metrics import logits_to_label_maps
from .optim import (
    OFFICIAL_CLIP_LR_MULTIPLIER,
    apply_clip_finetune_policy,
    build_optimizer,
    count_parameters,
    get_parameter_groups,
)

__all__ = ["CATSegTrainer", "EVAL_IGNORE_KEYS"]

logger = logging.get_logger(__name__)

# Model outputs besides the logits that evaluation should not collect (they are per-vocabulary or intermediate).
EVAL_IGNORE_KEYS = ["class_embeddings", "hidden_states", "attentions", "cost_volume", "image_features", "selected_classes"]


class CATSegTrainer(Trainer):
    """`Trainer` with CAT-Seg's training recipe.

    - **Trainable parameters**: CLIP's per `config.clip_finetune` (`apply_clip_finetune_policy`), the rest all.
    - **Optimizer**: the optimizer chosen by `args.optim` (AdamW by default) over the official parameter groups
      (`catseg_hf.training.optim.get_parameter_groups`): base learning rate for the aggregator, times
      `args.clip_lr_multiplier` (official 0.01) for the CLIP parameters that train under `config.clip_finetune`;
      weight decay `args.weight_decay` except for normalisation layers (`args.weight_decay_norm`), embeddings
      (`args.weight_decay_embed`) and Swin position tables (0). Arguments that are plain `TrainingArguments` fall
      back to the official values for the three added settings.
    - **Loss**: the model's own (binary cross-entropy over all classes, a mean per batch).
    - **Evaluation**: logits are turned into label maps at the label resolution batch by batch, in
      `prediction_step` (before `Trainer` pads and gathers them across processes), so that with
      `batch_eval_metrics=True` and `compute_metrics=SegmentationMetrics(...)` nothing accumulates. A
      `preprocess_logits_for_metrics` argument replaces the conversion (default:
      [`~catseg_hf.training.metrics.logits_to_label_maps`]) and is applied there, once.

    Use `remove_unused_columns=False` and `label_names=["labels"]` (the defaults of `CATSegTrainingArguments`).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        # Applied in `prediction_step` (before the cross-process padding) instead of by `Trainer.evaluation_loop`.
        self.logits_to_predictions = kwargs.pop("preprocess_logits_for_metrics", None) or logits_to_label_maps
        super().__init__(*args, **kwargs)
        # Which CLIP parameters train is part of the recipe (config.clip_finetune), applied before the optimizer.
        apply_clip_finetune_policy(self.accelerator.unwrap_model(self.model))
        if self.args.remove_unused_columns:
            raise ValueError(
                "CATSegTrainer needs remove_unused_columns=False: the 'image'/'label' columns are consumed by the "
                "datasets transforms and the collator, not by the model's forward."
            )

    # ------------------------------------------------------------------------------------------------ optimizer
    def _recipe_setting(self, name: str, default: float) -> float:
        return float(getattr(self.args, name, default))

    def get_parameter_groups(self, model: nn.Module | None = None) -> list[dict[str, Any]]:
        """The official parameter groups for `model` (default: the trainer's model), with the learning rate and
        weight decays of `self.args`."""
        model = self.model if model is None else model
        return get_parameter_groups(
            model,
            learning_rate=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            clip_lr_multiplier=self._recipe_setting("clip_lr_multiplier", OFFICIAL_CLIP_LR_MULTIPLIER),
            weight_decay_norm=self._recipe_setting("weight_decay_norm", 0.0),
            weight_decay_embed=self._recipe_setting("weight_decay_embed", 0.0),
        )

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Builds `self.optimizer` (unless one was passed in `optimizers=`) over the official parameter groups."""
        if self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if any(key in optimizer_kwargs for key in ("params", "model", "optimizer_dict")):
            raise ValueError(
                f"optim={self.args.optim!r} builds its own parameter groups, which would replace CAT-Seg's; use an "
                "optimizer that takes parameter groups (e.g. adamw_torch_fused or adamw_torch, the official AdamW)."
            )
        self.optimizer = build_optimizer(
            opt_model,
            optimizer_cls,
            optimizer_kwargs,
            weight_decay=self.args.weight_decay,
            clip_lr_multiplier=self._recipe_setting("clip_lr_multiplier", OFFICIAL_CLIP_LR_MULTIPLIER),
            weight_decay_norm=self._recipe_setting("weight_decay_norm", 0.0),
            weight_decay_embed=self._recipe_setting("weight_decay_embed", 0.0),
        )
        if self.args.should_log:
            sizes = count_parameters(self.get_parameter_groups(opt_model))
            summary = ", ".join(
                f"{group['name']}: {sizes[group['name']]:,} params, lr {group['lr']:.3g}, wd {group['weight_decay']:.3g}"
                for group in self.optimizer.param_groups
            )
            logger.info(f"Optimizer {optimizer_cls.__name__} with parameter groups: {summary}")
        return self.optimizer

    # ------------------------------------------------------------------------------------------------ evaluation
    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """`Trainer.prediction_step`, returning label maps (B, H, W) at the label size instead of logits.

        The maps are made here, before `Trainer` pads predictions and labels across processes (it pads only the
        height), because resizing logits to a padded label would misalign them; the width is padded here with -100
        so that images of different sizes gather across processes.
        """
        if ignore_keys is None:
            ignore_keys = list(EVAL_IGNORE_KEYS)
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        if prediction_loss_only or logits is None:
            return loss, logits, labels
        predictions = self.logits_to_predictions(logits, labels)
        if labels is not None and self.accelerator.num_processes > 1:
            # Height and width both padded here: collective calls, every process runs them at every step.
            for dim in (1, 2):
                predictions = self.accelerator.pad_across_processes(predictions, dim=dim, pad_index=-100)
                labels = self.accelerator.pad_across_processes(labels, dim=dim, pad_index=-100)
        return loss, predictions, labels
