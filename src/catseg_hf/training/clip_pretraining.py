"""CLIP's own image-text pretraining, in miniature: contrastive training of a `CLIPModel` on captioned images, and
zero-shot classification accuracy, as CLIP papers report it.

CAT-Seg starts from a CLIP that has seen every concept in image-level captions (never a mask). For the synthetic
demo model the tiny CLIP is trained this way first (`pretrain_clip`), then CAT-Seg is trained on masks of a subset of
the classes; `zero_shot_accuracy` measures what the tiny CLIP learned before any mask is involved.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["pretrain_clip", "zero_shot_accuracy", "check_image_level"]

# Keys that would carry dense supervision; image-level pretraining refuses examples holding any of them.
DENSE_TARGET_KEYS = ("label", "labels", "mask", "masks", "segmentation", "semantic_map")


def check_image_level(example: dict) -> None:
    """Raises if `example` carries anything but image-level text: CLIP pretraining must never see a mask."""
    dense = [key for key in example if key in DENSE_TARGET_KEYS]
    if dense:
        raise ValueError(
            f"CLIP pretraining takes image-caption pairs only, but an example holds {dense}: drop the dense targets "
            "(pretraining sees captions, never masks)."
        )
    if "image" not in example or "caption" not in example:
        raise ValueError(f"A pretraining example needs 'image' and 'caption' keys, got {sorted(example)}.")


def _batches(examples: Iterable[dict], batch_size: int) -> Iterator[list[dict]]:
    iterator = iter(examples)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield batch


def pretrain_clip(
    clip_model: Any,
    processor: Any,
    examples: Iterable[dict],
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    weight_decay: float = 0.1,
    warmup_steps: int = 100,
    max_grad_norm: float = 1.0,
    log_every: int = 200,
) -> dict:
    """Trains `clip_model` with CLIP's contrastive loss on image-caption pairs.

    The loss is `CLIPModel`'s own (`return_loss=True`): the symmetric cross-entropy over the batch's image-text
    cosine similarities, scaled by CLIP's learnable temperature (`logit_scale`). AdamW, linear warm-up then cosine
    decay, gradient clipping.

    Args:
        clip_model ([`~transformers.CLIPModel`]):
            Trained in place (left in eval mode).
        processor ([`CATSegProcessor`]):
            Its image processor makes the CLIP views (whole mode) and its tokenizer the captions' ids, the same
            preprocessing CAT-Seg later uses.
        examples (`Iterable[dict]`):
            Dicts with `image` and `caption` (e.g. `catseg_hf.data.captioned_scenes("pretrain", seed)`); an example
            with a dense target (`label`, `mask`, ...) is refused. Must yield `steps * batch_size` examples.
        steps (`int`):
            Optimisation steps.
        batch_size (`int`, *optional*, defaults to 32):
            Pairs per step: each image's caption is contrasted with the other `batch_size - 1` captions.
        learning_rate, weight_decay, warmup_steps, max_grad_norm:
            The optimisation settings.
        log_every (`int`, *optional*, defaults to 200):
            Log the running loss every this many steps.

    Returns:
        `dict` with `steps`, `loss` (mean of the last 20 steps), `logit_scale` and `runtime_s`.
    """
    if steps < 1 or batch_size < 2:
        raise ValueError(f"Need steps >= 1 and batch_size >= 2 (a contrastive batch), got {steps} and {batch_size}.")
    parameters = [p for p in clip_model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("The CLIP model has no trainable parameters; call clip_model.requires_grad_(True) first.")
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)

    def schedule(step: int) -> float:
        warmup = min(1.0, (step + 1) / max(1, warmup_steps))
        return warmup * 0.5 * (1.0 + math.cos(math.pi * step / steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    clip_model.train()
    losses: list[float] = []
    start = time.time()
    batches = _batches(examples, batch_size)
    for step in range(steps):
        batch = next(batches, None)
        if batch is None or len(batch) < batch_size:
            raise ValueError(f"The examples ran out at step {step} of {steps}; give at least steps * batch_size pairs.")
        for example in batch:
            check_image_level(example)
        pixel_values = processor.image_processor([e["image"] for e in batch], mode="whole", return_tensors="pt")
        text = processor.tokenizer([e["caption"] for e in batch], padding=True, return_tensors="pt")
        outputs = clip_model(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            pixel_values=pixel_values["pixel_values"],
            return_loss=True,
        )
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(outputs.loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            logger.info(f"[CLIP pretraining] step {step}/{steps}: contrastive loss {np.mean(losses[-20:]):.4f}")
    clip_model.eval()
    return {
        "steps": steps,
        "batch_size": batch_size,
        "loss": float(np.mean(losses[-20:])),
        "logit_scale": float(clip_model.logit_scale.detach().exp()),
        "runtime_s": time.time() - start,
    }


@torch.no_grad()
def zero_shot_accuracy(
    clip_model: Any,
    processor: Any,
    examples: Iterable[dict],
    class_names: Sequence[str],
    template: str,
    batch_size: int = 64,
) -> dict:
    """Zero-shot classification accuracy of a CLIP model, as CLIP papers measure it.

    Each image is assigned the class whose prompt (`template` filled with the name) has the highest cosine similarity
    with the image embedding; no training on the classes is involved.

    Args:
        clip_model ([`~transformers.CLIPModel`]): The model.
        processor ([`CATSegProcessor`]): Image processor (whole mode) and tokenizer.
        examples (`Iterable[dict]`):
            Dicts with `image` and `class_names` (exactly one name, the true class).
        class_names (`Sequence[str]`): The candidate classes.
        template (`str`): Prompt with `{}` for the name.
        batch_size (`int`, *optional*, defaults to 64): Images per forward.

    Returns:
        `dict` with `accuracy`, `per_class` (accuracy per true class) and `num_images`.
    """
    clip_model.eval()
    prompts = processor.tokenizer([template.format(name) for name in class_names], padding=True, return_tensors="pt")
    text = F.normalize(clip_model.get_text_features(**prompts).pooler_output, dim=-1)
    hits: dict[str, list[bool]] = {name: [] for name in class_names}
    for batch in _batches(examples, batch_size):
        for example in batch:
            if len(example["class_names"]) != 1 or example["class_names"][0] not in hits:
                raise ValueError(f"Zero-shot examples show exactly one of the classes, got {example['class_names']}.")
        pixel_values = processor.image_processor([e["image"] for e in batch], mode="whole", return_tensors="pt")
        image = F.normalize(clip_model.get_image_features(pixel_values=pixel_values["pixel_values"]).pooler_output, dim=-1)
        predictions = (image @ text.T).argmax(-1).tolist()
        for example, prediction in zip(batch, predictions):
            hits[example["class_names"][0]].append(class_names[prediction] == example["class_names"][0])
    total = [hit for values in hits.values() for hit in values]
    if not total:
        raise ValueError("No zero-shot examples were given.")
    return {
        "accuracy": float(np.mean(total)),
        "per_class": {name: float(np.mean(values)) for name, values in hits.items() if values},
        "num_images": len(total),
    }
