#!/usr/bin/env python
"""The paper's CLIP fine-tuning study in miniature, on the synthetic shapes: frozen vs attention vs full fine-tuning.

    python scripts/reproduce_finetuning_study.py [--seeds 0 1 2] [--modes frozen attention full] [--jobs 2]
    python scripts/reproduce_finetuning_study.py --quick      # a smoke run of every step (seconds; the tests use it)

1. The tiny CLIP is pretrained once with CLIP's contrastive loss on captions of all 16 combinations (no masks); its
   zero-shot accuracy is reported.
2. For every policy and seed, CAT-Seg is trained from that CLIP with `scripts/train.py recipes/tiny_shapes.yaml
   --clip_finetune MODE --seed SEED` (same budget for all), on masks of the 12 seen combinations only.
3. Every model is measured through the public inference path on fresh images: mean IoU on `validation` (seen
   combinations), `heldout` (unseen combinations) and their harmonic mean. The table (mean +- standard deviation
   over seeds, and each run) is printed and written as JSON and Markdown.

The paper's claim it tests: fine-tuning CLIP through the cost volume helps the seen classes without collapsing the
unseen ones, and fine-tuning only the attention (query/value) projections is the best trade-off.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "tiny_shapes.yaml"
TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train.py"

# A smoke run: every step end to end, tiny budgets.
QUICK = dict(clip_steps=4, clip_batch_size=4, eval_images=2, seeds=[0], zero_shot_images=4,
             train_args=["--max_steps", "2", "--synthetic_train_size", "4", "--per_device_train_batch_size", "2",
                         "--logging_steps", "1"])

PAPER_CLAIM = (
    "Paper (CAT-Seg, CVPR 2024, fine-tuning ablation): fine-tuning CLIP's image and text encoders through the cost "
    "volume improves over a frozen CLIP on both seen and unseen classes, and fine-tuning only the attention "
    "(query/value) projections is better than full fine-tuning, which overfits the training classes."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["frozen", "attention", "full"],
                        choices=["frozen", "attention", "full"], help="CLIP fine-tuning policies to compare.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="Stage-2 training seeds.")
    parser.add_argument("--clip-steps", type=int, default=4000, help="Stage-1 contrastive pretraining steps.")
    parser.add_argument("--clip-batch-size", type=int, default=32, help="Stage-1 pairs per step.")
    parser.add_argument("--zero-shot-images", type=int, default=320, help="Images for the zero-shot accuracy.")
    parser.add_argument("--eval-images", type=int, default=100, help="Fresh images per evaluation split.")
    parser.add_argument("--jobs", type=int, default=2, help="Stage-2 runs at once (one torch thread each).")
    parser.add_argument("--bpe", default=None, help="bpe_simple_vocab_16e6.txt.gz (default: the shared fixture).")
    parser.add_argument("--work-dir", default=None, help="Keep the trained models here (default: temporary).")
    parser.add_argument("--output", default=None, help="Write the results as JSON (and a .md table beside it).")
    parser.add_argument("--quick", action="store_true", help="Smoke run of every step with tiny budgets.")
    parser.add_argument("--reuse", action="store_true",
                        help="Reuse the finished stages found in --work-dir (re-measure without retraining).")
    args, train_args = parser.parse_known_args(argv)
    if train_args and train_args[0] == "--":
        train_args = train_args[1:]
    if args.quick:
        args.clip_steps, args.clip_batch_size = QUICK["clip_steps"], QUICK["clip_batch_size"]
        args.eval_images, args.seeds, args.zero_shot_images = QUICK["eval_images"], QUICK["seeds"], QUICK["zero_shot_images"]
        train_args = [*QUICK["train_args"], *train_args]

    from catseg_hf.testing_utils import shared_dir

    bpe = Path(args.bpe) if args.bpe else shared_dir() / "fixtures" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe.is_file():
        raise SystemExit(f"CLIP BPE file {bpe} not found; pass --bpe /path/to/bpe_simple_vocab_16e6.txt.gz.")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="finetuning-study-"))
    work.mkdir(parents=True, exist_ok=True)

    import logging

    import torch

    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("catseg_hf").setLevel(logging.INFO)  # stage-1 progress
    torch.set_num_threads(max(1, args.jobs))
    from catseg_hf.training import parse_recipe_and_overrides
    from catseg_hf.training.tiny_shapes import (
        evaluate_model_folder, markdown_table, pretrain_tiny_clip, summarise, train_catseg, wait_all,
    )

    _, data_args, _ = parse_recipe_and_overrides([str(RECIPE), "--bpe_path", str(bpe), *train_args])
    start = time.time()
    clip_dir = work / "stage1-clip"
    if args.reuse and (clip_dir / "pretraining_summary.json").is_file():
        stage1 = json.loads((clip_dir / "pretraining_summary.json").read_text())
    else:
        print(f"[stage 1] contrastive pretraining of the tiny CLIP: {args.clip_steps} steps", flush=True)
        stage1 = pretrain_tiny_clip(RECIPE, bpe, clip_dir, steps=args.clip_steps, batch_size=args.clip_batch_size,
                                    zero_shot_images=args.zero_shot_images)
    print(f"[stage 1] zero-shot accuracy over the 16 combinations: {stage1['zero_shot_accuracy']:.3f} "
          f"({stage1['runtime_s'] / 60:.1f} min)", flush=True)

    torch.set_num_threads(1)
    jobs = [(mode, seed) for seed in args.seeds for mode in args.modes]
    runs, running = [], []
    for index, (mode, seed) in enumerate(jobs):
        folder = work / f"stage2-{mode}-seed{seed}"
        if args.reuse and (folder / "train_results.json").is_file():
            process = None
        else:
            print(f"[stage 2] {mode} fine-tuning, seed {seed} -> {folder}", flush=True)
            process = train_catseg(TRAIN_SCRIPT, RECIPE, bpe, clip_dir, folder, mode, seed, extra_args=train_args,
                                   log_file=work / f"{folder.name}.log")
        running.append((mode, seed, folder, process))
        # Reused runs take no slot: --jobs processes train at once.
        if sum(p is not None for *_, p in running) == max(1, args.jobs) or index == len(jobs) - 1:
            wait_all([process for *_, process in running if process is not None])
            for mode_, seed_, folder_, _ in running:
                result = evaluate_model_folder(folder_, args.eval_images, data_args.synthetic_seed,
                                               data_args.synthetic_image_size)
                train = json.loads((folder_ / "train_results.json").read_text())
                result.update(mode=mode_, seed=seed_, train_runtime_s=float(train["train_runtime"]), folder=str(folder_))
                runs.append(result)
                print(f"  {mode_} seed {seed_}: seen {result['seen_miou']:.3f}, unseen {result['unseen_miou']:.3f}, "
                      f"harmonic {result['harmonic_miou']:.3f}", flush=True)
            running = []

    summary = summarise(runs, args.modes)
    table = markdown_table(summary, len(args.seeds))
    best = max(summary, key=lambda mode: summary[mode]["harmonic_miou"]["mean"])
    wall = time.time() - start
    results = {
        "paper_claim": PAPER_CLAIM,
        "stage1": {k: v for k, v in stage1.items() if k != "zero_shot_per_class"},
        "zero_shot_per_class": stage1["zero_shot_per_class"],
        "summary": summary,
        "best_mode": best,
        "runs": runs,
        "seeds": args.seeds,
        "clip_steps": args.clip_steps,
        "train_args": train_args,
        "eval_images": args.eval_images,
        "wall_minutes": wall / 60,
        "quick": args.quick,
    }
    print(table)
    print(f"Best trade-off (harmonic mean): {best}; {wall / 60:.1f} min in all.")
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        output.with_suffix(".md").write_text(
            f"{table}\n\nStage-1 zero-shot accuracy (16 combinations): {stage1['zero_shot_accuracy']:.3f}. "
            f"{len(args.seeds)} seed(s), {args.eval_images} fresh images per split, {wall / 60:.0f} min in all.\n"
        )
        print(f"Wrote {output} and {output.with_suffix('.md')}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
