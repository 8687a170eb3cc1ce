"""Command-line / recipe arguments of CAT-Seg training, parsed with `transformers.HfArgumentParser`.

Three dataclasses: [`ModelArguments`] (which model to start from), [`DataArguments`] (dataset, class
names, augmentation) and [`CATSegTrainingArguments`] (`transformers.TrainingArguments` with the official CAT-Seg
optimisation settings as defaults, plus the CLIP learning-rate multiplier and the weight-decay exceptions).

A run is described by a recipe file (YAML or JSON, keys = argument names) plus optional `--key value` overrides on
the command line, which win over the recipe: see [`parse_recipe_and_overrides`].

This module deliberately does not use `from __future__ import annotations`: `HfArgumentParser` reads the field
types at run time (PEP 604 unions such as `str | None` are real types there on the Python versions transformers
supports).
"""

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import SchedulerType

__all__ = [
    "MODEL_PRESETS",
    "CATSegTrainingArguments",
    "DataArguments",
    "ModelArguments",
    "load_recipe",
    "parse_recipe_and_overrides",
]

MODEL_PRESETS = ("base", "large", "tiny")
RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ModelArguments:
    """Which CAT-Seg model to train (give exactly one of `model_name_or_path` and `model_preset`)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A CAT-Seg model folder or Hub id (e.g. a converted official checkpoint) to fine-tune."},
    )
    model_preset: str | None = field(
        default=None,
        metadata={
            "help": "Start from a fresh model: 'base' (CLIP ViT-B/16 at 384 px), 'large' (CLIP ViT-L/14@336) or "
            "'tiny' (a few-MB model for tests and the synthetic demo). The aggregator is randomly initialised; CLIP "
            "too unless --clip_model_name_or_path is given.",
            "choices": list(MODEL_PRESETS),
        },
    )
    clip_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained CLIP weights for a preset model, loaded with CLIPModel.from_pretrained (e.g. "
            "openai/clip-vit-base-patch16 for 'base', openai/clip-vit-large-patch14-336 for 'large'); the CLIP "
            "config is taken from it."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of CATSegConfig fields to override, e.g. '{\"clip_resolution\": 128}'; a nested "
            "'clip_config' object is merged into the CLIP config (e.g. {\"clip_config\": {\"vision_config\": "
            "{\"patch_size\": 8}}})."
        },
    )
    clip_finetune: str | None = field(
        default=None,
        metadata={
            "help": "Which CLIP parameters train: 'attention' (query/value projection weights, the official "
            "setting), 'frozen' or 'full'. Default: the model config's.",
            "choices": ["attention", "frozen", "full"],
        },
    )
    processor_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Folder or Hub id of a saved CATSegProcessor (image processor + CLIP tokenizer)."},
    )
    bpe_path: str | None = field(
        default=None,
        metadata={"help": "OpenAI's CLIP BPE file (bpe_simple_vocab_16e6.txt.gz) to build the tokenizer from, offline."},
    )
    inference_mode: str | None = field(
        default=None,
        metadata={
            "help": "Mode saved in the image processor for inference: 'sliding' (the official protocol; default) "
            "or 'whole'.",
            "choices": ["sliding", "whole"],
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Hub cache folder."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow loading a model folder whose code is not catseg_hf's own."}
    )

    def __post_init__(self):
        if self.config_overrides is None or isinstance(self.config_overrides, dict):
            return
        try:
            parsed = json.loads(self.config_overrides)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--config_overrides must be a JSON object such as '{{\"clip_resolution\": 128}}', got "
                f"{self.config_overrides!r} ({err})."
            ) from err
        if not isinstance(parsed, dict):
            raise ValueError(f"--config_overrides must be a JSON object, got {type(parsed).__name__}.")
        self.config_overrides = parsed

    @property
    def overrides(self) -> dict[str, Any]:
        """`config_overrides` as a dict (empty when not given)."""
        return dict(self.config_overrides or {})


@dataclass
class DataArguments:
    """Training/evaluation data, class names and augmentation."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, local parquet file/folder, save_to_disk folder, the data root of an official "
            "layout (with --dataset_layout), or 'synthetic' for the built-in coloured-shapes benchmark."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_layout: str | None = field(
        default=None,
        metadata={
            "help": "CAT-Seg's prepared folder layout, e.g. 'coco_stuff' (data root: --dataset_name, else "
            "$DETECTRON2_DATASETS, else ./datasets)."
        },
    )
    train_image_dir: str | None = field(default=None, metadata={"help": "Training images (paired by file stem)."})
    train_mask_dir: str | None = field(default=None, metadata={"help": "Training masks (class-id PNGs)."})
    eval_image_dir: str | None = field(default=None, metadata={"help": "Evaluation images."})
    eval_mask_dir: str | None = field(default=None, metadata={"help": "Evaluation masks."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str | None = field(
        default="validation",
        metadata={
            "help": "Split(s) evaluated during/after training; several as 'a,b' (metrics are then prefixed "
            "eval_<split>_). 'none' disables evaluation."
        },
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (auto-detected by default)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (auto-detected by default)."})
    class_names: str | None = field(
        default=None,
        metadata={
            "help": "Class names: a JSON file (a list of names in label-id order, e.g. CAT-Seg's datasets/coco.json) "
            "or a benchmark name ('coco_stuff', 'a150', ...) looked up in --class_names_dir. Default: from the "
            "dataset (ClassLabel feature or id2label)."
        },
    )
    class_names_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder holding the benchmark class-name JSON files (default: $CATSEG_SHARED_DIR/benchmarks)."
        },
    )
    ignore_index: int = field(default=255, metadata={"help": "Label id of unlabelled pixels."})
    reduce_labels: bool = field(
        default=False, metadata={"help": "Labels use 0 for 'unlabelled': map 0 to the ignore id and shift the rest."}
    )
    crop_size: int = field(default=384, metadata={"help": "Random crop size (official: 384)."})
    min_size_train: list[int] = field(
        default_factory=lambda: [384],
        metadata={"help": "Shorter side after resizing; several values: one picked per image (official: 384)."},
    )
    max_size_train: int = field(default=1333, metadata={"help": "Longer-side cap after resizing (official: 1333)."})
    cat_max_ratio: float = field(
        default=1.0, metadata={"help": "Crop category-area constraint (official: 1.0, disabled)."}
    )
    color_aug: bool = field(default=True, metadata={"help": "SSD colour jitter (official: on)."})
    flip_prob: float = field(default=0.5, metadata={"help": "Horizontal flip probability (official: 0.5)."})
    eval_short_side: int | None = field(
        default=None,
        metadata={"help": "Resize evaluation images so the shorter side is this (official test size: 640); "
                  "default: native size."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N examples."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the training data (needs --max_steps; exact resume is then not guaranteed)."},
    )
    synthetic_train_size: int = field(default=2000, metadata={"help": "Synthetic benchmark: training images."})
    synthetic_eval_size: int = field(default=100, metadata={"help": "Synthetic benchmark: images per eval split."})
    synthetic_image_size: int = field(default=128, metadata={"help": "Synthetic benchmark: image side."})
    synthetic_seed: int = field(default=0, metadata={"help": "Synthetic benchmark: dataset seed."})
    synthetic_vocabulary: str = field(
        default="all",
        metadata={"help": "Synthetic benchmark: training vocabulary, 'all' (17 names) or 'seen' (background and the "
                  "12 seen combinations: the held-out ones are never a training class)."},
    )

    @property
    def eval_splits(self) -> list[str]:
        """The evaluation splits as a list (empty when disabled)."""
        if self.eval_split is None or self.eval_split.strip().lower() in ("", "none"):
            return []
        return [split.strip() for split in self.eval_split.split(",") if split.strip()]


@dataclass
class CATSegTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments` with the official CAT-Seg recipe as defaults.

    Defaults changed from `TrainingArguments`: `learning_rate=2e-4`, `weight_decay=1e-4`, `max_grad_norm=0.01`
    (whole-model gradient clipping), `lr_scheduler_type="cosine"` (no warm-up), `remove_unused_columns=False` and
    `label_names=["labels"]` (the data pipeline uses `datasets` transforms), `batch_eval_metrics=True` (streaming
    mean IoU). Added: `clip_lr_multiplier`, `weight_decay_norm`, `weight_decay_embed` (see
    `catseg_hf.training.optim`).
    """

    learning_rate: float = field(default=2e-4, metadata={"help": "Base learning rate (official: 2e-4)."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (official: 1e-4)."})
    max_grad_norm: float = field(
        default=0.01, metadata={"help": "Clip the whole model's gradient norm to this (official: 0.01)."}
    )
    lr_scheduler_type: SchedulerType | str = field(
        default="cosine", metadata={"help": "Learning-rate schedule (official: cosine without warm-up)."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Must stay False: the image/label columns are consumed by the transforms and collator."},
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "Keys of the label tensors in the batches."}
    )
    batch_eval_metrics: bool = field(
        default=True, metadata={"help": "Compute mean IoU batch by batch (flat memory during evaluation)."}
    )
    clip_lr_multiplier: float = field(
        default=0.01, metadata={"help": "Learning-rate factor of the trainable CLIP parameters (official: 0.01)."}
    )
    weight_decay_norm: float = field(
        default=0.0, metadata={"help": "Weight decay of normalisation-layer parameters (official: 0.0)."}
    )
    weight_decay_embed: float = field(
        default=0.0, metadata={"help": "Weight decay of nn.Embedding parameters (official: 0.0)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns=True would drop the 'image'/'label' columns before the CAT-Seg transforms and "
                "collator see them; set remove_unused_columns=False."
            )
        if self.clip_lr_multiplier < 0 or self.weight_decay_norm < 0 or self.weight_decay_embed < 0:
            raise ValueError("clip_lr_multiplier, weight_decay_norm and weight_decay_embed must be >= 0.")


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a recipe file: a YAML or JSON mapping from argument names to values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe file {str(path)!r} not found.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"Recipe {str(path)!r} must be a mapping of argument names to values, got {type(data).__name__}.")
    return data


def _overrides_parser(dataclass_types: Sequence[type]) -> HfArgumentParser:
    """A parser for the same arguments that returns only those given on the command line."""
    parser = HfArgumentParser(dataclass_types)
    for action in parser._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
            action.required = False
    return parser


def parse_recipe_and_overrides(
    argv: Sequence[str] | None = None,
    dataclass_types: Sequence[type] = (ModelArguments, DataArguments, CATSegTrainingArguments),
) -> tuple[Any, ...]:
    """Parses `[recipe.yaml|recipe.json] [--key value ...]` into the argument dataclasses.

    The recipe's values are the starting point and command-line options override them (a recipe is optional; without
    one this is a plain `HfArgumentParser` command line). Recipe values keep their YAML types, so lists and nested
    mappings (e.g. `report_to: [tensorboard, wandb]`, `config_overrides: {...}`) work there.

    Returns:
        One instance per dataclass type, in order.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    recipe: dict[str, Any] = {}
    recipe_path = None
    if argv and not argv[0].startswith("-") and argv[0].endswith(RECIPE_SUFFIXES):
        recipe_path = argv.pop(0)
        recipe = load_recipe(recipe_path)
    namespace, unknown = _overrides_parser(dataclass_types).parse_known_args(argv)
    if unknown:
        raise ValueError(
            f"Unrecognised command-line arguments {unknown}. Options are the fields of ModelArguments, DataArguments "
            "and CATSegTrainingArguments, written --name value (run with --help for the list)."
        )
    merged = {**recipe, **vars(namespace)}
    parser = HfArgumentParser(dataclass_types)
    known = {action.dest for action in parser._actions}
    unused = sorted(key for key in merged if key not in known)
    if unused:
        source = f"recipe {recipe_path!r}" if recipe_path else "the arguments"
        raise ValueError(f"Unknown keys in {source}: {unused}. Check their spelling against --help.")
    # `parse_dict` hands the values to the dataclasses as they are; JSON/YAML null means "leave the default".
    merged = {key: value for key, value in merged.items() if value is not None}
    return parser.parse_dict(merged)

