"""The synthetic demo model, built as a miniature of CAT-Seg's setting: the two training stages and their measurement.

1. **CLIP pretraining** (`pretrain_tiny_clip`): the recipe's tiny CLIP, from random weights, trained with CLIP's
   contrastive loss on captioned scenes of all 16 colour/shape combinations (`captioned_scenes("pretrain")`), never a
   mask; its zero-shot classification accuracy over the 16 combinations is measured on fresh single-shape images.
2. **CAT-Seg training** (`train_catseg`): `scripts/train.py` on the recipe, which trains on masks of the 12 seen
   combinations in the seen-only vocabulary (`synthetic_vocabulary: seen`), so a held-out combination is neither in a
   mask nor a training class.
3. **Measurement** (`measure_miou`): through the public inference path (processor -> model -> post-processing),
   queried with all 17 names, on fresh images of `validation` (seen combinations) and `heldout` (unseen ones). As in
   zero-shot segmentation papers, the seen (unseen) mean IoU averages the IoU of the seen (unseen) combinations,
   each split scored on its own images; an unseen pixel called by a seen name counts against the unseen class (a
   miss) and the reverse. The hub `mean_iou` of each split (every class predicted or present, background included)
   is kept beside it.

`scripts/make_tiny_shapes_model.py` (the shipped model) and `scripts/reproduce_finetuning_study.py` (CLIP frozen /
attention / full fine-tuning over seeds) are thin command lines over these functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "STUDY_MODES",
    "pretrain_tiny_clip",
    "train_catseg",
    "measure_miou",
    "harmonic_mean",
    "evaluate_model_folder",
    "summarise",
    "markdown_table",
]

# The fine-tuning policies the study compares, in the paper's order.
STUDY_MODES = ("frozen", "attention", "full")


def harmonic_mean(seen: float, unseen: float) -> float:
    """The harmonic mean of seen and unseen mean IoU (0 when either is 0), as zero-shot segmentation papers report."""
    return 0.0 if seen <= 0 or unseen <= 0 else 2 * seen * unseen / (seen + unseen)


def pretrain_tiny_clip(
    recipe: str | Path,
    bpe_path: str | Path,
    output_dir: str | Path,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    zero_shot_images: int = 320,
) -> dict:
    """Stage 1: CLIP's contrastive pretraining of the recipe's tiny CLIP on captions; saves a `CLIPModel` folder.

    Args:
        recipe (`str` or `Path`): The CAT-Seg recipe whose `model_preset`/`config_overrides` define the tiny CLIP.
        bpe_path (`str` or `Path`): OpenAI's CLIP BPE file (the tokenizer).
        output_dir (`str` or `Path`): Where the `CLIPModel` and its tokenizer are saved.
        steps, batch_size, learning_rate: Contrastive training budget (see [`pretrain_clip`]).
        seed (`int`, *optional*, defaults to 0): Initialisation and caption-stream seed.
        zero_shot_images (`int`, *optional*, defaults to 320): Fresh single-shape images (all 16 combinations) for
            the zero-shot accuracy.

    Returns:
        `dict`: the pretraining facts (loss, temperature, runtime) and `zero_shot_accuracy` / `zero_shot_per_class`.
    """
    import torch

    from ..data.synthetic import ALL_COMBOS, CAPTION_TEMPLATE, captioned_scenes
    from .arguments import parse_recipe_and_overrides
    from .clip_pretraining import pretrain_clip, zero_shot_accuracy
    from .setup import build_model, build_processor

    model_args, data_args, _ = parse_recipe_and_overrides([str(recipe), "--bpe_path", str(bpe_path)])
    torch.manual_seed(seed)
    model = build_model(model_args)
    processor = build_processor(model, model_args)
    clip = model.clip
    clip.requires_grad_(True)
    examples = captioned_scenes("pretrain", seed, image_size=data_args.synthetic_image_size)
    facts = pretrain_clip(clip, processor, examples, steps=steps, batch_size=batch_size, learning_rate=learning_rate)
    # Zero-shot images come from another seed stream than any pretraining image.
    names = [f"{color} {shape}" for color, shape in ALL_COMBOS]
    zero_shot = zero_shot_accuracy(
        clip, processor, captioned_scenes("zeroshot", seed, num_images=zero_shot_images,
                                          image_size=data_args.synthetic_image_size),
        names, template=CAPTION_TEMPLATE,
    )
    output_dir = Path(output_dir)
    clip.save_pretrained(output_dir)
    processor.tokenizer.save_pretrained(output_dir)
    facts.update(
        seed=seed,
        learning_rate=learning_rate,
        zero_shot_accuracy=zero_shot["accuracy"],
        zero_shot_per_class=zero_shot["per_class"],
        zero_shot_images=zero_shot["num_images"],
    )
    (output_dir / "pretraining_summary.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def train_catseg(
    train_script: str | Path,
    recipe: str | Path,
    bpe_path: str | Path,
    clip_dir: str | Path,
    output_dir: str | Path,
    clip_finetune: str,
    seed: int,
    threads: int = 1,
    extra_args: list[str] | None = None,
    log_file: str | Path | None = None,
) -> subprocess.Popen:
    """Stage 2: starts `scripts/train.py RECIPE` from the stage-1 CLIP with the given fine-tuning policy and seed.

    Returns the running process (the study runs several at once); its stdout/stderr go to `log_file` when given.
    """
    command = [
        sys.executable, str(train_script), str(recipe), "--output_dir", str(output_dir), "--bpe_path", str(bpe_path),
        "--clip_model_name_or_path", str(clip_dir), "--clip_finetune", clip_finetune, "--seed", str(seed),
        *(extra_args or []),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    output = open(log_file, "w") if log_file else None  # noqa: SIM115 - closed by the caller through `wait_all`
    process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT if output else None)
    process.log_handle = output  # type: ignore[attr-defined]
    process.command = command  # type: ignore[attr-defined]
    return process


def wait_all(processes: list[subprocess.Popen]) -> None:
    """Waits for stage-2 processes; raises with the log file's tail when one failed."""
    failed = []
    for process in processes:
        code = process.wait()
        handle = getattr(process, "log_handle", None)
        if handle is not None:
            handle.close()
        if code != 0:
            tail = Path(handle.name).read_text()[-3000:] if handle is not None else ""
            failed.append(f"{' '.join(process.command)} exited with {code}\n{tail}")
    if failed:
        raise RuntimeError("Stage-2 training failed:\n" + "\n\n".join(failed))


def measure_miou(model: Any, processor: Any, split: str, num_images: int, seed: int, image_size: int,
                 batch_size: int = 16, vocabulary: str = "all") -> dict:
    """Mean IoU on a synthetic split, queried with all 17 names (`vocabulary="all"`) or only the 13 training names
    (`"seen"`, `validation` only: the closed-set figure), through the processor (whole mode), the model and
    `post_process_semantic_segmentation`.

    Returns:
        `dict` with `mean_iou` (the mean IoU of the split's own combinations: the seen ones on `validation`, the
        held-out ones on `heldout`), `hub_mean_iou` and `overall_accuracy` (hub `mean_iou` semantics over all
        classes) and `per_class` IoU.
    """
    import torch

    from ..data import make_synthetic_dataset
    from ..data.synthetic import HELDOUT_COMBOS, SEEN_COMBOS
    from ..evaluation import StreamingMeanIoU

    if split not in ("validation", "heldout"):
        raise ValueError(f"measure_miou scores the 'validation' or 'heldout' split, not {split!r}.")
    dataset, names = make_synthetic_dataset(split, num_images, seed, image_size=image_size, vocabulary=vocabulary)
    metric = StreamingMeanIoU(num_labels=len(names), ignore_index=255)
    model.eval()
    for start in range(0, num_images, batch_size):
        rows = dataset[start : start + batch_size]
        labels = [np.asarray(label) for label in rows["label"]]
        inputs = processor(images=rows["image"], text=names, mode="whole", return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[label.shape for label in labels])
        metric.update([np.asarray(label_map) for label_map in maps], labels)
    result = metric.compute()
    per_class = {name: float(iou) for name, iou in zip(names, result["per_category_iou"]) if not np.isnan(iou)}
    combos = SEEN_COMBOS if split == "validation" else HELDOUT_COMBOS
    split_classes = [f"{color} {shape}" for color, shape in combos]
    return {
        "mean_iou": float(np.mean([per_class.get(name, 0.0) for name in split_classes])),
        "hub_mean_iou": float(result["mean_iou"]),
        "overall_accuracy": float(result["overall_accuracy"]),
        "per_class": per_class,
    }


def evaluate_model_folder(model_dir: str | Path, num_images: int, seed: int, image_size: int) -> dict:
    """Seen (`validation`) and unseen (`heldout`) mean IoU and their harmonic mean of a saved model folder, with the
    seen figure also measured in the 13 training names only (`seen_miou_training_names`)."""
    from ..modeling_catseg import CATSegForSemanticSegmentation
    from ..processing_catseg import CATSegProcessor

    model = CATSegForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = CATSegProcessor.from_pretrained(model_dir)
    start = time.time()
    seen = measure_miou(model, processor, "validation", num_images, seed, image_size)
    unseen = measure_miou(model, processor, "heldout", num_images, seed, image_size)
    # The closed-set figure: the same seen images queried with the 13 training names only, so that no held-out name
    # competes for their pixels.
    closed_set = measure_miou(model, processor, "validation", num_images, seed, image_size, vocabulary="seen")
    return {
        "seen_miou": seen["mean_iou"],
        "unseen_miou": unseen["mean_iou"],
        "harmonic_miou": harmonic_mean(seen["mean_iou"], unseen["mean_iou"]),
        "seen_miou_training_names": closed_set["mean_iou"],
        "seen_hub_miou": seen["hub_mean_iou"],
        "unseen_hub_miou": unseen["hub_mean_iou"],
        "seen_accuracy": seen["overall_accuracy"],
        "unseen_accuracy": unseen["overall_accuracy"],
        "seen_per_class": seen["per_class"],
        "unseen_per_class": unseen["per_class"],
        "eval_images": num_images,
        "eval_runtime_s": time.time() - start,
    }


# The table's columns: the zero-shot protocol's seen / unseen / harmonic mean IoU, the closed-set seen figure, then
# each split's hub mean_iou.
METRICS = ("seen_miou", "unseen_miou", "harmonic_miou", "seen_miou_training_names", "seen_hub_miou", "unseen_hub_miou")


def summarise(runs: list[dict], modes: list[str]) -> dict:
    """Mean and standard deviation over seeds of each metric, per mode."""
    summary = {}
    for mode in modes:
        rows = [run for run in runs if run["mode"] == mode]
        summary[mode] = {
            key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows])),
                  "values": [r[key] for r in rows]}
            for key in METRICS
        }
    return summary


def markdown_table(summary: dict, num_seeds: int) -> str:
    """The study's table: mean +- standard deviation over the seeds, per fine-tuning policy."""
    lines = [
        "| CLIP during CAT-Seg training | seen mIoU | unseen mIoU | harmonic mean | seen mIoU, 13 training names | "
        "hub mean_iou, validation | hub mean_iou, heldout | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {"frozen": "frozen", "attention": "attention (Q,V) fine-tuning", "full": "full fine-tuning"}
    for mode, metrics in summary.items():
        cells = [f"{metrics[k]['mean']:.3f} ± {metrics[k]['std']:.3f}" for k in METRICS]
        lines.append(f"| {labels.get(mode, mode)} | " + " | ".join(cells) + f" | {num_seeds} |")
    return "\n".join(lines)
