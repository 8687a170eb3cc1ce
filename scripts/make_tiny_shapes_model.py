#!/usr/bin/env python
"""Train the tiny demo model on the synthetic shapes and write `examples/tiny-shapes-catseg/`.

    python scripts/make_tiny_shapes_model.py [--output examples/tiny-shapes-catseg] [--bpe bpe_simple_vocab_16e6.txt.gz]
        [-- extra scripts/train.py options]

Steps (all on the CPU):
1. *Tiny CLIP pretraining*, a stand-in for CLIP's web-scale image-text pretraining, which CAT-Seg relies on: the
   randomly initialised tiny CLIP of the recipe is trained with a dense image-text contrastive loss (softmax over the
   17 class prompts at every patch of CAT-Seg's dense CLIP features) on the synthetic training split. Without it,
   the class costs carry no information at the start and CAT-Seg training only learns foreground vs background.
2. *CAT-Seg training*: `scripts/train.py recipes/tiny_shapes.yaml --clip_model_name_or_path <stage 1>`, the official
   recipe's structure scaled down (see the recipe).
3. The model and its processor (image processor + OpenAI's CLIP tokenizer built from the BPE file) are saved into
   `--output` (safetensors, with the modelling code for `trust_remote_code`); mean IoU is measured through the public
   inference path (processor -> model -> post-processing) on the `validation` split (seen colour/shape combinations)
   and the `heldout` split (unseen combinations), and the model card `README.md` is written with those numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "examples" / "tiny-shapes-catseg"
RECIPE = REPO_ROOT / "recipes" / "tiny_shapes.yaml"


def pretrain_tiny_clip(
    model_args,
    data_args,
    output_dir: Path,
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> dict:
    """Stage 1: dense image-text contrastive training of the recipe's tiny CLIP; saves it as a `CLIPModel` folder.

    At every cell of the CLIP patch grid, the L2-normalised dense CAT-Seg image embedding is compared with the
    L2-normalised prompt embedding of each of the 17 classes (cosine times CLIP's learnable logit scale), and the
    class of the pixel at the cell's centre is the softmax cross-entropy target. As in CAT-Seg training, the held-out
    combinations are in the vocabulary but never in an image, so their prompts only ever serve as negatives.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from catseg_hf.data import CATSegTrainingCollator, make_synthetic_dataset
    from catseg_hf.training import IndexedTrainTransform, build_model, build_processor

    torch.manual_seed(seed)
    model = build_model(model_args)
    processor = build_processor(model, model_args)
    model.clip.requires_grad_(True)
    model.train()
    dataset, vocabulary = make_synthetic_dataset(
        "train", data_args.synthetic_train_size, data_args.synthetic_seed, image_size=data_args.synthetic_image_size
    )
    transform = IndexedTrainTransform(
        seed=seed, crop_size=data_args.crop_size, min_size=list(data_args.min_size_train), color_aug=False,
        flip_prob=data_args.flip_prob,
    )
    prompts = processor.encode_class_names(vocabulary)
    collator = CATSegTrainingCollator(None, processor.image_processor)
    parameters = list(model.clip.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * step / steps)))
    rng = np.random.default_rng(seed)
    order: list[int] = []
    losses, accuracies = [], []
    for step in range(steps):
        if len(order) < batch_size:
            transform.epoch = step  # fresh augmentations for every pass over the data
            order.extend(rng.permutation(len(dataset)).tolist())
        indices, order = order[:batch_size], order[batch_size:]
        rows = dataset[indices]
        rows = transform({"image": rows["image"], "label": rows["label"], "__example_index__": indices})
        batch = collator([{"image": image, "label": label} for image, label in zip(rows["image"], rows["label"])])
        features = model.get_image_features(batch["pixel_values"]).image_embeddings
        text = model.get_class_embeddings(prompts["input_ids"], prompts["attention_mask"])[:, 0]
        logits = torch.einsum("bchw,tc->bthw", F.normalize(features, dim=1), F.normalize(text, dim=-1))
        logits = logits * model.clip.logit_scale.exp()
        targets = F.interpolate(batch["labels"][:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0]
        targets = targets.long()
        loss = F.cross_entropy(logits, targets, ignore_index=255)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        foreground = targets > 0
        losses.append(loss.item())
        accuracies.append(float((logits.argmax(1)[foreground] == targets[foreground]).float().mean()))
        if step % 100 == 0 or step == steps - 1:
            print(f"[stage 1] step {step}: loss {np.mean(losses[-20:]):.4f}, foreground patch accuracy "
                  f"{np.mean(accuracies[-20:]):.3f}", flush=True)
    model.clip.save_pretrained(output_dir)
    return {"steps": steps, "loss": float(np.mean(losses[-20:])), "foreground_patch_accuracy": float(np.mean(accuracies[-20:]))}


def measure_miou(model, processor, split: str, num_images: int, seed: int, image_size: int, batch_size: int = 16):
    """Mean IoU (hub `mean_iou` semantics) of `model` on a synthetic split, through processor and post-processing."""
    import numpy as np
    import torch

    from catseg_hf.data import make_synthetic_dataset
    from catseg_hf.evaluation import StreamingMeanIoU

    dataset, names = make_synthetic_dataset(split, num_images, seed, image_size=image_size)
    metric = StreamingMeanIoU(num_labels=len(names), ignore_index=255)
    model.eval()
    for start in range(0, num_images, batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, num_images))]
        labels = [np.asarray(row["label"]) for row in rows]
        inputs = processor(images=[row["image"] for row in rows], text=names, mode="whole", return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[lab.shape for lab in labels])
        metric.update([np.asarray(m) for m in maps], labels)
    result = metric.compute()
    per_class = {name: float(iou) for name, iou in zip(names, result["per_category_iou"]) if not np.isnan(iou)}
    return float(result["mean_iou"]), float(result["overall_accuracy"]), per_class


MODEL_CARD = """---
library_name: transformers
pipeline_tag: image-segmentation
license: mit
tags:
- catseg
- open-vocabulary-semantic-segmentation
- synthetic
- tiny
---

# tiny-shapes-catseg

A **tiny CAT-Seg** ({num_params:,} parameters; {size_mb:.1f} MB on disk with its tokenizer) trained **from scratch**
on the synthetic coloured-shapes benchmark of catseg-hf (`catseg_hf.data.make_synthetic_dataset`). It exists for
demos and tests of the catseg-hf code paths (processor, model, post-processing, `Trainer`), offline and on a CPU.
**It is not CLIP-pretrained, knows nothing about real images and is useless on them.** For real use, convert the
official CAT-Seg checkpoints (see the catseg-hf README).

## What it is

- Architecture: `CATSegForSemanticSegmentation` with a tiny CLIP (vision: width {vision_width}, {vision_layers} layers, patch {patch}
  at {clip_resolution} px, i.e. a {grid}x{grid} patch grid; text: width {text_width}, {text_layers} layers, OpenAI's
  49408-token vocabulary) and a tiny aggregator (hidden {hidden}, {agg_layers} aggregation layers, Swin windows of
  {window}); logits at {logits}x{logits}.
- Tokenizer: OpenAI's CLIP BPE (built offline from `bpe_simple_vocab_16e6.txt.gz`); prompt template
  `{template}`.
- Classes: 17 names (in `config.id2label`): `background` plus 4 colours (red, green, blue, yellow) x 4 shapes
  (circle, square, triangle, cross). Training images contain only 12 of the 16 combinations; red triangle,
  green cross, blue circle and yellow square are held out.

## How it was trained

`python scripts/make_tiny_shapes_model.py` ({wall_minutes:.0f} min in all on a CPU shared with other jobs, {threads}
torch thread(s); the numbers it measured are in `training_summary.json`):

1. **Tiny CLIP pretraining** (a stand-in for CLIP's image-text pretraining, which CAT-Seg builds on), from random
   initialisation: {clip_steps} steps, batch 16, AdamW lr 2e-3 (cosine), a softmax cross-entropy between CAT-Seg's
   dense CLIP image embedding at every patch and the 17 prompt embeddings (the held-out names are only ever
   negatives, since their combinations never appear in a training image), on {train_images} synthetic training
   images of {image_size} px with random flips. Final foreground patch accuracy {clip_accuracy:.2f} (training
   batches); {clip_minutes:.1f} min.
2. **CAT-Seg training** with `scripts/train.py recipes/tiny_shapes.yaml --clip_model_name_or_path <stage 1>`: the
   official recipe's structure (binary cross-entropy over all 17 classes, AdamW with weight decay 1e-4 except
   normalisation layers and embeddings, CLIP "attention" fine-tuning of the query/value projection weights at
   lr x 0.01, cosine schedule without warm-up, whole-model gradient clipping at {max_grad_norm}) scaled down:
   {steps} steps, batch {batch_size}, lr {lr}, the same {train_images} images with random flips and no colour
   jitter (colour is what the classes are about). {train_minutes:.1f} min.

## Measured mean IoU

Mean IoU (hub `mean_iou` semantics: classes absent from both prediction and reference are skipped) over synthetic
images never seen in training ({eval_images} per split, dataset seed {seed}, {image_size} px), queried with all 17
class names, through `CATSegProcessor` (whole-image mode) -> model -> `post_process_semantic_segmentation`:

| split | what it contains | mean IoU | pixel accuracy |
|---|---|---|---|
| `validation` | seen colour/shape combinations | **{seen_miou:.3f}** | {seen_acc:.3f} |
| `heldout` | unseen combinations (known words, new compositions) | **{unseen_miou:.3f}** | {unseen_acc:.3f} |

Per-class IoU on `validation`: {seen_per_class_line}. The main error is a cross taken for a square of the same
colour (or the reverse): a {grid}x{grid} patch grid barely resolves a cross's arms. A larger CLIP input or longer
training would help, at proportionally more CPU time.

The held-out number would measure whether the model composes "red triangle" from "red circle" and "blue
triangle"; a 2-layer, 16-wide text tower trained on 17 fixed prompts, with the held-out ones only as negatives,
has no reason to, and the number is reported as measured, not as a capability.

## Usage

```python
import catseg_hf  # or pass trust_remote_code=True where catseg_hf is not installed
from transformers import AutoModelForSemanticSegmentation, AutoProcessor
from catseg_hf.data import render_scene

model = AutoModelForSemanticSegmentation.from_pretrained("examples/tiny-shapes-catseg").eval()
processor = AutoProcessor.from_pretrained("examples/tiny-shapes-catseg")
image, _ = render_scene(seed=1, size={image_size})
names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
inputs = processor(images=image, text=names, mode="whole", return_tensors="pt")
outputs = model(**inputs)
label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]

# Its 17 classes are also its default vocabulary, so transformers' image-segmentation pipeline works as is:
from transformers import pipeline
segments = pipeline("image-segmentation", model="examples/tiny-shapes-catseg")(image)  # [{{"label", "mask", ...}}]
```

## Limitations

Synthetic data only: {image_size}-px flat-coloured shapes on a grey texture. Licence: MIT, as catseg-hf.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Model folder to write (replaced).")
    parser.add_argument("--bpe", default=None, help="bpe_simple_vocab_16e6.txt.gz (default: the shared fixture).")
    parser.add_argument("--work-dir", default=None, help="Scratch folder for training (default: a temporary one).")
    parser.add_argument("--eval-images", type=int, default=100, help="Images per evaluation split.")
    parser.add_argument("--clip-steps", type=int, default=4000, help="Stage-1 (tiny CLIP pretraining) steps.")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch/OpenMP threads for training; 1 is the robust choice on a CPU shared with other jobs.",
    )
    args, train_overrides = parser.parse_known_args(argv)
    if train_overrides and train_overrides[0] == "--":
        train_overrides = train_overrides[1:]

    from catseg_hf.testing_utils import shared_dir

    bpe = Path(args.bpe) if args.bpe else shared_dir() / "fixtures" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe.is_file():
        raise SystemExit(f"CLIP BPE file {bpe} not found; pass --bpe /path/to/bpe_simple_vocab_16e6.txt.gz.")
    scratch_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tiny-shapes-"))
    clip_dir, catseg_dir = scratch_dir / "stage1-clip", scratch_dir / "stage2-catseg"

    import torch

    torch.set_num_threads(max(1, args.threads))
    from catseg_hf import CATSegForSemanticSegmentation, CATSegProcessor
    from catseg_hf.training import load_recipe, parse_recipe_and_overrides, prepare_for_saving

    model_args, data_args, training_args = parse_recipe_and_overrides(
        [str(RECIPE), "--bpe_path", str(bpe), *train_overrides]
    )
    start = time.time()
    stage1 = pretrain_tiny_clip(model_args, data_args, clip_dir, steps=args.clip_steps, seed=training_args.seed)
    stage1["runtime_s"] = time.time() - start

    command = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), str(RECIPE), "--output_dir", str(catseg_dir),
               "--bpe_path", str(bpe), "--clip_model_name_or_path", str(clip_dir), *train_overrides]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    print("[stage 2]", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env, cwd=REPO_ROOT)
    wall = time.time() - start
    model = CATSegForSemanticSegmentation.from_pretrained(catseg_dir).eval()
    processor = CATSegProcessor.from_pretrained(catseg_dir)
    train_results = json.loads((catseg_dir / "train_results.json").read_text())
    global_step = json.loads((catseg_dir / "trainer_state.json").read_text())["global_step"]

    output = Path(args.output)
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    prepare_for_saving(model, processor, names)
    model.save_pretrained(output)
    processor.save_pretrained(output)

    seen_miou, seen_acc, seen_per_class = measure_miou(
        model, processor, "validation", args.eval_images, data_args.synthetic_seed, data_args.synthetic_image_size)
    unseen_miou, unseen_acc, unseen_per_class = measure_miou(
        model, processor, "heldout", args.eval_images, data_args.synthetic_seed, data_args.synthetic_image_size)

    config = model.config
    clip = config.clip_config
    facts = dict(
        num_params=sum(p.numel() for p in model.parameters()),
        steps=int(global_step),
        vision_width=clip.vision_config.hidden_size,
        vision_layers=clip.vision_config.num_hidden_layers,
        patch=clip.vision_config.patch_size,
        clip_resolution=config.clip_resolution,
        grid=config.feature_resolution[0],
        text_width=clip.text_config.hidden_size,
        text_layers=clip.text_config.num_hidden_layers,
        hidden=config.hidden_dim,
        agg_layers=config.num_aggregation_layers,
        window=config.window_size,
        logits=config.logits_resolution[0],
        train_images=data_args.synthetic_train_size,
        image_size=data_args.synthetic_image_size,
        batch_size=training_args.per_device_train_batch_size,
        lr=training_args.learning_rate,
        max_grad_norm=training_args.max_grad_norm,
        train_minutes=float(train_results["train_runtime"]) / 60,
        threads=args.threads,
        clip_steps=stage1["steps"],
        clip_accuracy=stage1["foreground_patch_accuracy"],
        clip_minutes=stage1["runtime_s"] / 60,
        template=processor.prompt_templates[0],
        eval_images=args.eval_images,
        seed=data_args.synthetic_seed,
        seen_miou=seen_miou,
        seen_acc=seen_acc,
        unseen_miou=unseen_miou,
        unseen_acc=unseen_acc,
        seen_per_class=seen_per_class,
        unseen_per_class=unseen_per_class,
        wall_minutes=wall / 60,
        recipe=load_recipe(RECIPE),
        train_overrides=train_overrides,
    )
    write_model_card(output, facts)
    print(json.dumps({k: facts[k] for k in ("seen_miou", "unseen_miou", "clip_minutes", "train_minutes")}, indent=2))
    size_mb = sum(f.stat().st_size for f in output.rglob("*") if f.is_file()) / 2**20
    print(f"Wrote {output} ({size_mb:.1f} MB)")
    if not args.work_dir:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    return 0


def write_model_card(output: Path, facts: dict) -> None:
    """Writes `training_summary.json` (the measured facts) and the model card `README.md` built from them."""
    (output / "training_summary.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    per_class = ", ".join(f"{name} {iou:.2f}" for name, iou in facts["seen_per_class"].items())
    files = [f for f in output.rglob("*") if f.is_file() and f.name != "README.md"]
    size_mb = sum(f.stat().st_size for f in files) / 2**20 + 0.01  # + the card itself
    card = MODEL_CARD.format(size_mb=size_mb, seen_per_class_line=per_class, **facts)
    (output / "README.md").write_text(card)


if __name__ == "__main__":
    sys.exit(main())
