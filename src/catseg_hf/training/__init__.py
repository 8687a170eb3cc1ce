"""Training CAT-Seg with `transformers.Trainer`, following the official recipe.

* `.optim` -- the official optimizer parameter groups (CLIP at lr x 0.01, the official weight-decay rules);
* `.trainer` -- [`CATSegTrainer`]: `Trainer` with those groups and streaming evaluation;
* `.metrics` -- [`SegmentationMetrics`] (`compute_metrics` with a streaming confusion matrix) and
  [`logits_to_label_maps`] (`preprocess_logits_for_metrics`);
* `.data` -- per-example seeded augmentation, so that a resumed run continues exactly;
* `.arguments` -- the `HfArgumentParser` dataclasses and the recipe-file parser of `scripts/train.py`;
* `.setup` -- model / processor / datasets / trainer from those arguments, and [`run_training`].
"""

from .arguments import (
    CATSegTrainingArguments,
    DataArguments,
    ModelArguments,
    load_recipe,
    parse_recipe_and_overrides,
)
from .data import EXAMPLE_INDEX_COLUMN, EpochSetterCallback, IndexedTrainTransform, with_example_index
from .metrics import SegmentationMetrics, logits_to_label_maps, preprocess_logits_for_metrics
from .optim import (
    NORM_MODULE_TYPES,
    OFFICIAL_CLIP_LR_MULTIPLIER,
    ParameterRule,
    build_optimizer,
    classify_parameters,
    get_parameter_groups,
)
from .setup import (
    build_model,
    build_processor,
    build_trainer,
    load_datasets,
    load_pretrained_clip,
    prepare_for_saving,
    resolve_class_names,
    run_training,
)
from .trainer import CATSegTrainer

__all__ = [
    "CATSegTrainer",
    "CATSegTrainingArguments",
    "DataArguments",
    "ModelArguments",
    "load_recipe",
    "parse_recipe_and_overrides",
    "EXAMPLE_INDEX_COLUMN",
    "EpochSetterCallback",
    "IndexedTrainTransform",
    "with_example_index",
    "SegmentationMetrics",
    "logits_to_label_maps",
    "preprocess_logits_for_metrics",
    "NORM_MODULE_TYPES",
    "OFFICIAL_CLIP_LR_MULTIPLIER",
    "ParameterRule",
    "build_optimizer",
    "classify_parameters",
    "get_parameter_groups",
    "build_model",
    "build_processor",
    "build_trainer",
    "load_datasets",
    "load_pretrained_clip",
    "prepare_for_saving",
    "resolve_class_names",
    "run_training",
]
