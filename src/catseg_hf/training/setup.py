"""Building blocks of `scripts/train.py`: model, processor, datasets and trainer from the parsed arguments.

Each function takes the argument dataclasses of `catseg_hf.training.arguments` and can be used on its own, e.g.
in a notebook::

    from catseg_hf.training import parse_recipe_and_overrides, run_training
    model_args, data_args, training_args = parse_recipe_and_overrides(["recipes/tiny_shapes.yaml", "--max_steps", "10"])
    metrics = run_training(model_args, data_args, training_args)
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

from transformers import CLIPConfig
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from ..configuration_catseg import CATSegConfig
from ..data import (
    CATSegTrainingCollator,
    EvalTransform,
    add_transform,
    load_segmentation_dataset,
    make_synthetic_dataset,
)
from ..data import load_class_names as load_dataset_class_names
from ..modeling_catseg import CATSegForSemanticSegmentation
from .arguments import CATSegTrainingArguments, DataArguments, ModelArguments
from .data import EpochSetterCallback, IndexedTrainTransform, with_example_index
from .metrics import SegmentationMetrics
from .optim import apply_clip_finetune_policy
from .trainer import CATSegTrainer

__all__ = [
    "SYNTHETIC_DATASET",
    "build_model",
    "build_processor",
    "build_trainer",
    "load_datasets",
    "load_pretrained_clip",
    "resolve_class_names",
    "run_training",
    "prepare_for_saving",
]

logger = logging.get_logger(__name__)

SYNTHETIC_DATASET = "synthetic"


# ---------------------------------------------------------------------------------------------------------- model
def _deep_update(base: dict, updates: Mapping) -> dict:
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _preset_config(model_args: ModelArguments) -> CATSegConfig:
    overrides = model_args.overrides
    clip_overrides = overrides.pop("clip_config", None) or {}
    if model_args.clip_model_name_or_path:
        # The CLIP dimensions come from the pretrained checkpoint, so its weights load into `model.clip` as they are.
        clip_config = CLIPConfig.from_pretrained(
            model_args.clip_model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision
        ).to_dict()
    elif model_args.model_preset == "tiny":
        from ..testing_utils import tiny_clip_config_dict

        clip_config = tiny_clip_config_dict()
    else:
        clip_config = CATSegConfig.from_preset(model_args.model_preset).clip_config.to_dict()
    clip_config = _deep_update(clip_config, clip_overrides)
    if model_args.model_preset == "tiny":
        from ..testing_utils import tiny_catseg_config

        return tiny_catseg_config(clip_config=clip_config, **overrides)
    return CATSegConfig.from_preset(model_args.model_preset, clip_config=clip_config, **overrides)


def load_pretrained_clip(model: CATSegForSemanticSegmentation, clip_model_name_or_path: str, **from_pretrained_kwargs: Any) -> None:
    """Copies the weights of a pretrained `transformers.CLIPModel` into `model.clip`.

    Args:
        model (`CATSegForSemanticSegmentation`):
            A CAT-Seg model whose `config.clip_config` has the dimensions of the checkpoint (build its config
            with `CATSegConfig.from_preset(variant, clip_config=CLIPConfig.from_pretrained(name))`).
        clip_model_name_or_path (`str`):
            Hub id or folder, e.g. `openai/clip-vit-base-patch16` (base) or
            `openai/clip-vit-large-patch14-336` (large).
        from_pretrained_kwargs (`Any`):
            Passed to `CLIPModel.from_pretrained` (cache_dir, revision, ...).

    The vision position embeddings stay at CLIP's pretraining grid (14x14 for ViT-B/16 at 224 px); CAT-Seg resizes
    them bicubically at run time, as the official implementation does. The CLIP fine-tuning mode
    (`config.clip_finetune`) is re-applied afterwards.
    """
    from transformers import CLIPModel

    pretrained = CLIPModel.from_pretrained(clip_model_name_or_path, **from_pretrained_kwargs)
    state_dict = pretrained.state_dict()
    own = model.clip.state_dict()
    mismatched = [
        f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(own[name].shape)}"
        for name, value in state_dict.items()
        if name in own and own[name].shape != value.shape
    ]
    if mismatched:
        raise ValueError(
            f"The CLIP weights of {clip_model_name_or_path!r} do not fit the model's CLIP config: {mismatched[:5]}. "
            "Build the model config from the checkpoint's CLIPConfig (build_model does this)."
        )
    result = model.clip.load_state_dict(state_dict, strict=False)
    # Non-persistent buffers (position ids) may be absent on either side; real weights must all be there.
    missing = [key for key in result.missing_keys if not key.endswith("position_ids")]
    unexpected = [key for key in result.unexpected_keys if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"Loading CLIP weights from {clip_model_name_or_path!r}: missing {missing[:10]}, unexpected "
            f"{unexpected[:10]}. Is it a transformers CLIPModel checkpoint?"
        )
    del pretrained


def build_model(model_args: ModelArguments) -> CATSegForSemanticSegmentation:
    """The model to train: from `model_name_or_path`, or a fresh `model_preset` (optionally with pretrained CLIP).

    `config_overrides` and `clip_finetune` are applied in both cases.
    """
    if bool(model_args.model_name_or_path) == bool(model_args.model_preset):
        raise ValueError(
            "Give exactly one of --model_name_or_path (a CAT-Seg model folder or Hub id to fine-tune) and "
            "--model_preset (base, large or tiny, for a new model)."
        )
    if model_args.model_name_or_path:
        if model_args.clip_model_name_or_path:
            raise ValueError("--clip_model_name_or_path only applies to --model_preset; the model folder has its CLIP.")
        overrides = model_args.overrides
        if "clip_config" in overrides:
            raise ValueError("A pretrained model's CLIP config cannot be overridden; drop 'clip_config' from --config_overrides.")
        model = CATSegForSemanticSegmentation.from_pretrained(
            model_args.model_name_or_path,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
            **overrides,
        )
    else:
        config = _preset_config(model_args)
        model = CATSegForSemanticSegmentation(config)
        if model_args.clip_model_name_or_path:
            load_pretrained_clip(
                model,
                model_args.clip_model_name_or_path,
                cache_dir=model_args.cache_dir,
                revision=model_args.model_revision,
            )
        else:
            logger.warning(
                f"Model preset {model_args.model_preset!r} without --clip_model_name_or_path: CLIP is randomly "
                "initialised (fine for tests and the synthetic demo; real training needs pretrained CLIP weights)."
            )
    apply_clip_finetune_policy(model, model_args.clip_finetune or None)
    return model


# ------------------------------------------------------------------------------------------------------ processor
def build_processor(model: CATSegForSemanticSegmentation, model_args: ModelArguments):
    """The `CATSegProcessor` saved with the model: a saved processor, else one built from the model config and a
    CLIP tokenizer (from `bpe_path`, `model_name_or_path` or `clip_model_name_or_path`, in this order)."""
    from ..processing_catseg import CATSegProcessor

    if model_args.processor_name_or_path:
        return CATSegProcessor.from_pretrained(model_args.processor_name_or_path, cache_dir=model_args.cache_dir)

    tokenizer = None
    if model_args.bpe_path:
        from ..tokenization import build_clip_tokenizer

        tokenizer = build_clip_tokenizer(model_args.bpe_path)
    elif model_args.model_name_or_path:
        try:
            processor = CATSegProcessor.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
        except (OSError, ValueError, TypeError) as err:
            logger.info(f"No processor in {model_args.model_name_or_path!r} ({err}); building one.")
        else:
            if model_args.inference_mode:
                processor.image_processor.mode = model_args.inference_mode
            return processor
    if tokenizer is None and model_args.clip_model_name_or_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_args.clip_model_name_or_path, cache_dir=model_args.cache_dir)
    if tokenizer is None:
        raise ValueError(
            "No CLIP tokenizer: pass --bpe_path (OpenAI's bpe_simple_vocab_16e6.txt.gz, works offline), "
            "--processor_name_or_path, or --clip_model_name_or_path."
        )
    return CATSegProcessor.from_model_config(
        model.config, tokenizer=tokenizer, mode=model_args.inference_mode or "sliding"
    )


# ------------------------------------------------------------------------------------------------------- datasets
def _limit(dataset, max_samples: int | None):
    if max_samples is None or dataset is None:
        return dataset
    if hasattr(dataset, "__len__"):
        return dataset.select(range(min(max_samples, len(dataset))))
    return dataset.take(max_samples)


def _load_split(data_args: DataArguments, split: str, training: bool, model_args: ModelArguments | None = None):
    if data_args.dataset_name == SYNTHETIC_DATASET:
        size = data_args.synthetic_train_size if training else data_args.synthetic_eval_size
        dataset, _ = make_synthetic_dataset(
            split, size, data_args.synthetic_seed, image_size=data_args.synthetic_image_size,
            vocabulary=data_args.synthetic_vocabulary,
        )
        return dataset
    image_dir = data_args.train_image_dir if training else data_args.eval_image_dir
    mask_dir = data_args.train_mask_dir if training else data_args.eval_mask_dir
    kwargs: dict[str, Any] = dict(
        split=split,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        streaming=data_args.streaming and training,
        reduce_labels=data_args.reduce_labels,
        ignore_index=data_args.ignore_index,
    )
    if data_args.dataset_config_name:
        kwargs["name"] = data_args.dataset_config_name
    if model_args is not None and model_args.cache_dir:
        kwargs["cache_dir"] = model_args.cache_dir
    if image_dir or mask_dir:
        return load_segmentation_dataset(image_dir=image_dir, mask_dir=mask_dir, **kwargs)
    if data_args.dataset_layout:
        return load_segmentation_dataset(data_args.dataset_name, layout=data_args.dataset_layout, **kwargs)
    if not data_args.dataset_name:
        raise ValueError(
            "No data: pass --dataset_name (Hub id, parquet/save_to_disk path, or 'synthetic'), --dataset_layout "
            "(e.g. coco_stuff), or --train_image_dir/--train_mask_dir (and --eval_image_dir/--eval_mask_dir)."
        )
    return load_segmentation_dataset(data_args.dataset_name, **kwargs)


def resolve_class_names(data_args: DataArguments, dataset: Any = None) -> list[str]:
    """Class names in label-id order, from `data_args.class_names` (JSON file or benchmark name) or the dataset."""
    if data_args.dataset_name == SYNTHETIC_DATASET and not data_args.class_names:
        from ..data import synthetic_class_names

        return synthetic_class_names(data_args.synthetic_vocabulary)
    source = data_args.class_names
    if source:
        path = Path(source).expanduser()
        if path.is_file():
            return load_dataset_class_names(class_names_file=path)
        from ..evaluation import load_class_names as load_benchmark_class_names

        try:
            return load_benchmark_class_names(source, data_args.class_names_dir)
        except ValueError as err:
            raise ValueError(
                f"--class_names {source!r} is neither an existing JSON file nor a known benchmark name ({err})."
            ) from err
    if dataset is not None:
        return load_dataset_class_names(dataset)
    if data_args.dataset_name:
        return load_dataset_class_names(data_args.dataset_name)
    raise ValueError("No class names: pass --class_names (a JSON list of names, or a benchmark name such as coco_stuff).")


def load_datasets(data_args: DataArguments, seed: int, model_args: ModelArguments | None = None, do_train: bool = True,
                  do_eval: bool = True):
    """Loads the training and evaluation data with their transforms.

    Returns:
        `(train_dataset, eval_datasets, class_names, train_transform)`: `eval_datasets` is None, one dataset, or a
        dict `{split: dataset}` when several splits are evaluated; `train_transform` is the
        [`IndexedTrainTransform`] (its epoch is set by [`EpochSetterCallback`]).
    """
    train_dataset = train_transform = None
    if do_train:
        train_dataset = _limit(_load_split(data_args, data_args.train_split, True, model_args), data_args.max_train_samples)
        train_transform = IndexedTrainTransform(
            seed=seed,
            crop_size=data_args.crop_size,
            min_size=list(data_args.min_size_train),
            max_size=data_args.max_size_train,
            cat_max_ratio=data_args.cat_max_ratio,
            ignore_index=data_args.ignore_index,
            flip_prob=data_args.flip_prob,
            color_aug=data_args.color_aug,
        )
        if hasattr(train_dataset, "__len__"):
            train_dataset = with_example_index(train_dataset)
        else:
            logger.warning("Streaming training data: augmentations are reproducible from the start, not across a resume.")
        train_dataset = add_transform(train_dataset, train_transform)

    eval_datasets = None
    folders_without_eval = bool(data_args.train_image_dir) and not data_args.eval_image_dir
    if do_eval and data_args.eval_splits and folders_without_eval:
        logger.warning("Training from image/mask folders without --eval_image_dir/--eval_mask_dir: no evaluation.")
    elif do_eval and data_args.eval_splits:
        loaded = {}
        for split in data_args.eval_splits:
            dataset = _limit(_load_split(data_args, split, False, model_args), data_args.max_eval_samples)
            loaded[split] = add_transform(dataset, EvalTransform(short=data_args.eval_short_side))
        eval_datasets = loaded if len(loaded) > 1 else next(iter(loaded.values()))

    reference = train_dataset if train_dataset is not None else eval_datasets
    if isinstance(reference, dict):
        reference = next(iter(reference.values()))
    class_names = resolve_class_names(data_args, reference)
    return train_dataset, eval_datasets, class_names, train_transform


# -------------------------------------------------------------------------------------------------------- trainer
def _align_special_tokens(model: CATSegForSemanticSegmentation, processor: Any) -> None:
    # Trainer copies the tokenizer's special-token ids into the model config (with a warning) when they differ; they
    # describe the same CLIP vocabulary, so set them beforehand.
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        return
    text_config = model.config.get_text_config()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            setattr(text_config, name, value)


def build_trainer(
    model: CATSegForSemanticSegmentation,
    processor: Any,
    training_args: CATSegTrainingArguments,
    train_dataset: Any,
    eval_dataset: Any,
    class_names: list[str],
    ignore_index: int = 255,
    train_transform: IndexedTrainTransform | None = None,
    callbacks: list | None = None,
) -> CATSegTrainer:
    """A [`CATSegTrainer`] with the collator (class prompts tokenised once), streaming mean IoU and the
    augmentation-epoch callback."""
    class_inputs = processor.encode_class_names(class_names)
    _align_special_tokens(model, processor)
    image_processor = processor.image_processor
    if image_processor.clip_resolution != model.config.clip_resolution:
        raise ValueError(
            f"The processor makes {image_processor.clip_resolution} px views but the model was built for "
            f"{model.config.clip_resolution} px (config.clip_resolution); use the processor saved with the model."
        )
    # Training batches are the processor's whole-mode views (its normalisation and padding), padded together.
    collator = CATSegTrainingCollator(
        {"input_ids": class_inputs["input_ids"], "attention_mask": class_inputs["attention_mask"]},
        image_processor,
        ignore_index=ignore_index,
    )
    all_callbacks = list(callbacks or [])
    if train_transform is not None:
        all_callbacks.append(EpochSetterCallback(train_transform))
    return CATSegTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        compute_metrics=SegmentationMetrics(len(class_names), ignore_index=ignore_index, class_names=class_names),
        callbacks=all_callbacks,
    )


def prepare_for_saving(model: CATSegForSemanticSegmentation, processor: Any = None, class_names: list[str] | None = None) -> None:
    """Makes every `save_pretrained` folder of `model` (checkpoints included) self-contained.

    The model and config carry their modelling code (`_auto_class`), so folders load with `trust_remote_code=True`
    where catseg_hf is not installed. With `processor` and `class_names`, the training vocabulary becomes the
    model's default vocabulary (`catseg_hf.pipelines.set_default_vocabulary`: `id2label`, the tokenised prompts, and
    the `auto_map` entry of transformers' `image-segmentation` pipeline); with `class_names` only, just `id2label`.
    """
    model.register_for_auto_class("AutoModel")
    model.config.register_for_auto_class()
    if class_names is None:
        return
    if processor is not None:
        from ..pipelines import set_default_vocabulary

        set_default_vocabulary(model, processor, class_names)
    else:
        model.config.id2label = dict(enumerate(class_names))
        model.config.label2id = {name: index for index, name in enumerate(class_names)}


# ------------------------------------------------------------------------------------------------------------ run
def _resume_checkpoint(training_args: CATSegTrainingArguments) -> str | None:
    value = training_args.resume_from_checkpoint
    if value is None:
        return None
    if str(value).lower() in ("true", "last", "latest"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {training_args.output_dir}.")
        return last
    return value


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: CATSegTrainingArguments,
    callbacks: list | None = None,
) -> dict[str, float]:
    """Trains (if `do_train` or no mode is given), saves the model and processor to `output_dir`, evaluates.

    Returns:
        The final metrics (`train_*` and `eval_*`).
    """
    do_train = training_args.do_train or not (training_args.do_eval or training_args.do_predict)
    do_eval = bool(data_args.eval_splits) and (training_args.do_eval or training_args.eval_strategy != "no" or do_train)

    model = build_model(model_args)
    processor = build_processor(model, model_args)
    train_dataset, eval_datasets, class_names, train_transform = load_datasets(
        data_args, training_args.seed, model_args, do_train=do_train, do_eval=do_eval
    )
    if do_train and not training_args.max_steps > 0 and not hasattr(train_dataset, "__len__"):
        raise ValueError("Streaming training data needs --max_steps.")
    prepare_for_saving(model, processor, class_names)
    trainer = build_trainer(
        model, processor, training_args, train_dataset, eval_datasets, class_names,
        ignore_index=data_args.ignore_index, train_transform=train_transform, callbacks=callbacks,
    )
    metrics: dict[str, float] = {}
    if do_train:
        result = trainer.train(resume_from_checkpoint=_resume_checkpoint(training_args))
        metrics.update(result.metrics)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        # Model (safetensors + code files) and processor; Trainer writes from the main process only.
        trainer.save_model()
    if do_eval and eval_datasets is not None:
        eval_metrics = trainer.evaluate()
        metrics.update(eval_metrics)
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
    return metrics
