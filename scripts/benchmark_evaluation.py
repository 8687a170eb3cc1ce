#!/usr/bin/env python
"""Evaluation throughput with and without DataLoader workers: `scripts/evaluate.py` on a synthetic ADE-150 in the
official folder layout, once per `--num-workers` value, each run in its own process.

    python scripts/make_random_checkpoint.py --variant base --output random-catseg-base
    python scripts/benchmark_evaluation.py --model random-catseg-base [--images 6] [--workers 0,2] \
        [--mode sliding|whole] [--threads 2] [--json results.json]
    python scripts/benchmark_evaluation.py --quick      # tiny random model, tiny images (smoke test, seconds)

The benchmark folder (`ADEChallengeData2016/images/validation/*.jpg` with `annotations_detectron2/validation/*.png`)
is written once into a temporary folder: `--images` random RGB images of 512x683 (the size of the speed cases of
`scripts/benchmark.py`), label maps with ids in [0, 150) and some 255 (ignored) pixels. Each run times
`evaluate.py --benchmarks a150 --data-root <folder> --num-workers N`; images/s is the number of images over the
benchmark's own `seconds` in `results.json` (text embedding, data loading, model, post-processing and the metric;
not the model load). The runs must count the same annotated pixels (checked); their scores can differ slightly, as
worker processes preprocess with one torch thread (float rounding; near-tied labels of random weights flip).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = (512, 683)
QUICK_IMAGE_SIZE = (40, 56)
IMAGES_DIR = "ADEChallengeData2016/images/validation"
ANNOTATIONS_DIR = "ADEChallengeData2016/annotations_detectron2/validation"
NUM_CLASSES = 150


def write_benchmark(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> Path:
    """A synthetic ADE-150 validation split of `count` images in the official layout under `root`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, annotations = root / IMAGES_DIR, root / ANNOTATIONS_DIR
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        stem = f"ADE_val_{index + 1:08d}"
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{stem}.jpg", quality=90)
        label = rng.integers(0, NUM_CLASSES, size).astype(np.uint8)
        label[: size[0] // 10] = 255
        Image.fromarray(label).save(annotations / f"{stem}.png")
    return root


def run_evaluation(args: argparse.Namespace, data_root: Path, workers: int, output: Path) -> dict:
    """One `evaluate.py` run with `workers` DataLoader workers; its results.json entry plus the process wall time."""
    command = [
        sys.executable, str(REPO / "scripts" / "evaluate.py"),
        "--model", str(args.model), "--benchmarks", "a150", "--data-root", str(data_root),
        "--num-workers", str(workers), "--mode", args.mode, "--output-dir", str(output), "--variant", "none",
    ]
    if args.quick:
        command += ["--short-edge", "48", "--max-size", "96"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(
            f"evaluate.py --num-workers {workers} failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}"
        )
    entry = json.loads((output / "results.json").read_text())["benchmarks"]["a150"]
    return {
        "num_workers": workers,
        "num_images": entry["num_images"],
        "seconds": entry["seconds"],
        "images_per_second": entry["num_images"] / entry["seconds"],
        "process_wall_seconds": round(wall, 3),
        "mean_iou": entry["mean_iou"],
        "num_counted_pixels": entry["num_counted_pixels"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmark_evaluation.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model folder with its processor (required unless --quick)")
    parser.add_argument("--images", type=int, default=None, help="images in the synthetic benchmark (default 6; 3 with --quick)")
    parser.add_argument("--workers", default="0,2", help="comma-separated --num-workers values (default: 0,2)")
    parser.add_argument("--mode", choices=["sliding", "whole"], default="sliding", help="default: sliding (official)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each evaluation (OMP_NUM_THREADS)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny random model and images (smoke test)")
    args = parser.parse_args(argv)
    try:
        workers = [int(value) for value in args.workers.split(",") if value.strip()]
    except ValueError:
        parser.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    if not workers or min(workers) < 0:
        parser.error(f"--workers needs at least one value >= 0, got {args.workers!r}")
    if args.images is not None and args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    if args.model is None and not args.quick:
        parser.error("--model is required (make one with scripts/make_random_checkpoint.py --variant base), or --quick")

    with tempfile.TemporaryDirectory(prefix="catseg-eval-bench-") as scratch:
        scratch = Path(scratch)
        if args.model is None:
            from catseg_hf.testing_utils import save_tiny_model_folder, shared_dir

            bpe = shared_dir() / "fixtures" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
            args.model = save_tiny_model_folder(scratch / "model", bpe)
        count = args.images or (3 if args.quick else 6)
        data_root = write_benchmark(scratch / "datasets", count, QUICK_IMAGE_SIZE if args.quick else IMAGE_SIZE)
        results = []
        for value in workers:
            result = run_evaluation(args, data_root, value, scratch / f"out-{value}")
            results.append(result)
            print(
                f"--num-workers {value}: {result['num_images']} images in {result['seconds']:.2f} s, "
                f"{result['images_per_second']:.4f} images/s (process {result['process_wall_seconds']:.1f} s)",
                flush=True,
            )
    baseline = results[0]["images_per_second"]
    for result in results[1:]:
        print(f"--num-workers {result['num_workers']} vs {results[0]['num_workers']}: "
              f"{result['images_per_second'] / baseline:.3f}x images/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": args.mode, "threads": args.threads, "runs": results}, indent=2) + "\n")
    if len({r["num_counted_pixels"] for r in results}) != 1:
        print("error: the runs counted different annotated pixels", file=sys.stderr)
        return 1
    for result in results[1:]:
        if result["mean_iou"] != results[0]["mean_iou"]:
            # The workers run the image processor with one torch thread, the main process with --threads: the views
            # differ by float rounding (2.4e-7 measured), which can flip near-tied labels of random weights.
            print(
                f"note: mean_iou {result['mean_iou']!r} with --num-workers {result['num_workers']}, "
                f"{results[0]['mean_iou']!r} with --num-workers {results[0]['num_workers']} (float rounding of the "
                "preprocessing across thread counts; random weights have near-tied labels)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
