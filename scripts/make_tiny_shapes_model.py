#!/usr/bin/env python
"""Build the shipped demo model `examples/tiny-shapes-catseg` with one command (about 20 min on a 2-core CPU).

    python scripts/make_tiny_shapes_model.py [--output examples/tiny-shapes-catseg] [--clip-finetune attention]
        [--study docs/finetuning-study.json] [-- extra scripts/train.py options]

A miniature of CAT-Seg's setting (`catseg_hf.training.tiny_shapes`):
1. the tiny CLIP is pretrained with CLIP's contrastive loss on captions of all 16 colour/shape combinations, never a
   mask (the stand-in for CLIP's web-scale image-text pretraining);
2. CAT-Seg is trained from it with `scripts/train.py recipes/tiny_shapes.yaml` on masks of the 12 seen combinations
   (the 4 held-out ones are never a training class), with the study's best CLIP fine-tuning policy;
3. the model is saved with its processor and all 17 names as its default vocabulary (safetensors, remote code), and
   measured through the public inference path on fresh images of seen (`validation`) and unseen (`heldout`)
   combinations; the model card (`README.md`, with a `model-index` for both splits) reports those numbers and, when
   `--study` points at the results of `scripts/reproduce_finetuning_study.py`, the study's table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "examples" / "tiny-shapes-catseg"
DEFAULT_STUDY = REPO_ROOT / "docs" / "finetuning-study.json"
RECIPE = REPO_ROOT / "recipes" / "tiny_shapes.yaml"
TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train.py"

CARD_BODY = """
# tiny-shapes-catseg

A **tiny CAT-Seg** ({num_params:,} parameters) for offline demos and tests of catseg-hf, built as a miniature of the
paper's setting on synthetic coloured shapes (`catseg_hf.data.synthetic`): its CLIP saw **every** colour/shape
combination in image-level captions, CAT-Seg was trained to segment **12** of the 16 combinations, and it segments the
other 4 (never in a mask, never a training class) from their names. **It knows nothing about real images**; for real
use, convert the official CAT-Seg checkpoints (see the catseg-hf README).

## Measured mean IoU

Through `CATSegProcessor` (whole image) -> model -> `post_process_semantic_segmentation`, queried with all 17 names, on
{eval_images} fresh synthetic images per split. As in zero-shot segmentation papers, the seen (unseen) mean IoU
averages the IoU of the 12 seen (4 unseen) combinations, each split scored on its own images; the hub `mean_iou` of
each split (every class predicted or present, background included) is beside it:

| split | what it contains | mean IoU | hub mean_iou | pixel accuracy |
|---|---|---|---|---|
| `validation` | seen colour/shape combinations | **{seen_miou:.3f}** | {seen_hub_miou:.3f} | {seen_accuracy:.3f} |
| `heldout` | unseen combinations: red triangle, green cross, blue circle, yellow square | **{unseen_miou:.3f}** | {unseen_hub_miou:.3f} | {unseen_accuracy:.3f} |

Harmonic mean {harmonic_miou:.3f}. Per class, seen: {seen_per_class}. Unseen: {unseen_per_class}. Seen mean IoU
with only the 13 training names offered (no held-out name competing for the pixels): {seen_miou_training_names:.3f}.

{study_section}
## How it was built

`python scripts/make_tiny_shapes_model.py` ({wall_minutes:.0f} min on a 2-core CPU; every measured fact is in
`training_summary.json`):

1. **CLIP pretraining** (the stand-in for CLIP's web-scale image-text pretraining): the tiny CLIP (vision: width
   {vision_width}, {vision_layers} layers, patch {patch} at {clip_resolution} px; text: width {text_width},
   {text_layers} layers, OpenAI's BPE vocabulary) from random weights, trained with CLIP's own contrastive loss
   (symmetric InfoNCE over a batch of {clip_batch_size}, learnable temperature) for {clip_steps} steps on fresh
   captioned scenes of all 16 combinations ("{caption_example}"), never a mask. Zero-shot classification accuracy over
   the 16 combinations on fresh single-shape images: **{zero_shot_accuracy:.3f}** ({clip_minutes:.1f} min).
2. **CAT-Seg training**: `scripts/train.py recipes/tiny_shapes.yaml --clip_model_name_or_path <stage 1>
   --clip_finetune {clip_finetune}`, the official recipe's structure scaled down (BCE over the 13 training classes,
   AdamW with the official weight-decay exceptions, CLIP's trained parameters at lr x {clip_lr_multiplier}, cosine schedule,
   whole-model gradient clipping): {steps} steps, batch {batch_size}, lr {lr}, {train_images} images of the 12 seen
   combinations ({train_minutes:.1f} min).
3. Saved with all 17 names as the default vocabulary (`config.id2label`), so the `image-segmentation` pipeline
   needs no class names; prompt template `{template}`.

## Usage

```python
import catseg_hf  # or pass trust_remote_code=True where catseg_hf is not installed
from transformers import AutoModelForSemanticSegmentation, AutoProcessor, pipeline
from catseg_hf.data.synthetic import HELDOUT_COMBOS, render_scene

model = AutoModelForSemanticSegmentation.from_pretrained("examples/tiny-shapes-catseg").eval()
processor = AutoProcessor.from_pretrained("examples/tiny-shapes-catseg")
image, _ = render_scene(seed=1, size=128, combos=HELDOUT_COMBOS)  # combinations it never segmented in training
names = ["background", "red triangle", "green cross", "blue circle", "yellow square", "red circle"]
inputs = processor(images=image, text=names, mode="whole", return_tensors="pt")
label_map = processor.post_process_semantic_segmentation(model(**inputs), target_sizes=[image.size[::-1]])[0]

segments = pipeline("image-segmentation", model="examples/tiny-shapes-catseg")(image)  # its 17 names by default
```

## Limitations

Synthetic data only: {image_size}-px flat-coloured shapes on a grey texture. It segments unseen combinations far less
reliably than seen ones, and both fall short of what the miniature was meant to reach (0.85 seen, 0.5 unseen); the
catseg-hf README ("The tiny demo model") measures why: colour is never the error, shape is (small objects on a 12x12
CLIP grid), and unseen objects lose their pixels to a seen name of the same colour. Licence: MIT, as catseg-hf.
"""


def study_section(study: dict | None) -> str:
    """The fine-tuning study's table for the card, or nothing when no study results are given."""
    if not study:
        return ""
    from catseg_hf.training.tiny_shapes import markdown_table

    return (
        "## The fine-tuning study\n\n"
        f"`scripts/reproduce_finetuning_study.py`: the same stage-1 CLIP, then CAT-Seg trained with CLIP frozen, "
        f"attention (query/value) fine-tuning or full fine-tuning, same budget, seeds {study['seeds']} (mean ± "
        f"standard deviation):\n\n{markdown_table(study['summary'], len(study['seeds']))}\n\n"
        f"{study['paper_claim']} See the catseg-hf README for what this miniature agrees and disagrees with.\n"
    )


def model_card(facts: dict, study: dict | None):
    """The model card: `huggingface_hub.ModelCardData` metadata (with a `model-index` for both splits) + the body."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    def result(split: str, value: float, label: str) -> EvalResult:
        return EvalResult(
            task_type="image-segmentation", task_name="Open-vocabulary semantic segmentation",
            dataset_type="catseg-hf/synthetic-shapes", dataset_name=f"Synthetic shapes ({label})",
            dataset_split=split, metric_type="mean_iou", metric_name="mIoU", metric_value=round(value, 4),
        )

    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license="mit",
        tags=["catseg", "open-vocabulary-semantic-segmentation", "synthetic", "tiny"],
        metrics=["mean_iou"],
        model_name="tiny-shapes-catseg",
        eval_results=[
            result("validation", facts["seen_miou"], "seen combinations"),
            result("heldout", facts["unseen_miou"], "unseen combinations"),
        ],
    )
    from catseg_hf.data.synthetic import HELDOUT_COMBOS, SEEN_COMBOS

    # Each split's own combinations, as its mean IoU averages them.
    per_class = {
        key: ", ".join(f"{color} {shape} {facts[key].get(f'{color} {shape}', 0.0):.2f}" for color, shape in combos)
        for key, combos in (("seen_per_class", SEEN_COMBOS), ("unseen_per_class", HELDOUT_COMBOS))
    }
    body = CARD_BODY.format(study_section=study_section(study), **{**facts, **per_class})
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Model folder to write (replaced).")
    parser.add_argument("--bpe", default=None, help="bpe_simple_vocab_16e6.txt.gz (default: the shared fixture).")
    parser.add_argument("--work-dir", default=None, help="Scratch folder for training (default: a temporary one).")
    parser.add_argument("--clip-finetune", default="attention", choices=["frozen", "attention", "full"],
                        help="CLIP policy in CAT-Seg training (default: the study's best trade-off).")
    parser.add_argument("--clip-steps", type=int, default=4000, help="Stage-1 contrastive pretraining steps.")
    parser.add_argument("--clip-batch-size", type=int, default=32, help="Stage-1 pairs per step.")
    parser.add_argument("--seed", type=int, default=0, help="Stage-2 training seed.")
    parser.add_argument("--eval-images", type=int, default=100, help="Fresh images per evaluation split.")
    parser.add_argument("--study", default=str(DEFAULT_STUDY),
                        help="Results JSON of scripts/reproduce_finetuning_study.py to put in the card (if present).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (stage 1 and stage 2).")
    parser.add_argument(
        "--reuse", action="store_true",
        help="Reuse finished stages found in --work-dir (e.g. the study's: stage1-clip/, stage2-MODE-seedN/) "
             "instead of training them again.",
    )
    args, train_overrides = parser.parse_known_args(argv)
    if train_overrides and train_overrides[0] == "--":
        train_overrides = train_overrides[1:]

    from catseg_hf.testing_utils import shared_dir

    bpe = Path(args.bpe) if args.bpe else shared_dir() / "fixtures" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe.is_file():
        raise SystemExit(f"CLIP BPE file {bpe} not found; pass --bpe /path/to/bpe_simple_vocab_16e6.txt.gz.")
    output = Path(args.output)
    if output.exists() and not (output / "config.json").is_file():
        raise SystemExit(f"{output} exists and is not a model folder; refusing to replace it.")
    scratch = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tiny-shapes-"))
    # The study's folder names, so that --reuse picks up its runs.
    clip_dir, catseg_dir = scratch / "stage1-clip", scratch / f"stage2-{args.clip_finetune}-seed{args.seed}"

    import logging

    import torch

    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("catseg_hf").setLevel(logging.INFO)  # stage-1 progress
    torch.set_num_threads(max(1, args.threads))
    from catseg_hf import CATSegForSemanticSegmentation, CATSegProcessor
    from catseg_hf.data.synthetic import CAPTION_TEMPLATE, synthetic_class_names
    from catseg_hf.training import parse_recipe_and_overrides, prepare_for_saving
    from catseg_hf.training.tiny_shapes import evaluate_model_folder, pretrain_tiny_clip, train_catseg, wait_all

    _, data_args, training_args = parse_recipe_and_overrides([str(RECIPE), "--bpe_path", str(bpe), *train_overrides])
    stage1_summary = clip_dir / "pretraining_summary.json"
    if args.reuse and stage1_summary.is_file():
        stage1 = json.loads(stage1_summary.read_text())
        print(f"[stage 1] reusing {clip_dir}", flush=True)
    else:
        stage1 = pretrain_tiny_clip(RECIPE, bpe, clip_dir, steps=args.clip_steps, batch_size=args.clip_batch_size)
    print(f"[stage 1] zero-shot accuracy {stage1['zero_shot_accuracy']:.3f}", flush=True)
    if args.reuse and (catseg_dir / "train_results.json").is_file():
        print(f"[stage 2] reusing {catseg_dir}", flush=True)
    else:
        wait_all([train_catseg(TRAIN_SCRIPT, RECIPE, bpe, clip_dir, catseg_dir, args.clip_finetune, args.seed,
                               threads=args.threads, extra_args=train_overrides)])

    model = CATSegForSemanticSegmentation.from_pretrained(catseg_dir).eval()
    processor = CATSegProcessor.from_pretrained(catseg_dir)
    names = synthetic_class_names("all")  # the default vocabulary: all 17 names, held-out ones included
    prepare_for_saving(model, processor, names)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-shapes-", dir=output.parent))
    staging.chmod(0o755)  # a model folder, not a private temporary one
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    measured = evaluate_model_folder(staging, args.eval_images, data_args.synthetic_seed, data_args.synthetic_image_size)

    config, clip = model.config, model.config.clip_config
    train_results = json.loads((catseg_dir / "train_results.json").read_text())
    facts = dict(
        measured,
        num_params=sum(p.numel() for p in model.parameters()),
        clip_finetune=args.clip_finetune,
        seed=args.seed,
        steps=json.loads((catseg_dir / "trainer_state.json").read_text())["global_step"],
        vision_width=clip.vision_config.hidden_size, vision_layers=clip.vision_config.num_hidden_layers,
        patch=clip.vision_config.patch_size, clip_resolution=config.clip_resolution,
        text_width=clip.text_config.hidden_size, text_layers=clip.text_config.num_hidden_layers,
        train_images=data_args.synthetic_train_size, image_size=data_args.synthetic_image_size,
        batch_size=training_args.per_device_train_batch_size, lr=training_args.learning_rate,
        clip_lr_multiplier=training_args.clip_lr_multiplier,
        train_minutes=float(train_results["train_runtime"]) / 60,
        clip_steps=stage1["steps"], clip_batch_size=stage1["batch_size"], clip_minutes=stage1["runtime_s"] / 60,
        zero_shot_accuracy=stage1["zero_shot_accuracy"], zero_shot_per_class=stage1["zero_shot_per_class"],
        caption_example=CAPTION_TEMPLATE.format("red circle and a blue square"),
        template=processor.prompt_templates[0],
        threads=args.threads,
        train_overrides=train_overrides,
        # Training and measuring time, also when --reuse skipped the training here.
        wall_minutes=(stage1["runtime_s"] + float(train_results["train_runtime"]) + measured["eval_runtime_s"]) / 60,
    )
    study_path = Path(args.study) if args.study else None
    study = json.loads(study_path.read_text()) if study_path and study_path.is_file() else None
    (staging / "training_summary.json").write_text(json.dumps(facts, indent=2) + "\n")
    model_card(facts, study).save(staging / "README.md")
    # The new folder replaces the old one only once it is complete.
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    print(json.dumps({k: facts[k] for k in ("seen_miou", "unseen_miou", "harmonic_miou", "zero_shot_accuracy")}))
    if not args.work_dir:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
