#!/usr/bin/env python
"""Time and measure CAT-Seg inference, each case in its own process so that peak memory is per case.

    python scripts/make_random_checkpoint.py --variant base --output random-catseg-base
    python scripts/benchmark_speed.py --model random-catseg-base [--cases text150,text847,whole150,slide150,slide847] \
        [--runs 5] [--threads 2] [--dtype float32|bfloat16] [--json results.json]

Cases (one 512x683 RGB image, as in the issue's table):
- text150 / text847: class text embeddings of 150 / 847 class names (one template), the cache cleared each run;
- whole150: whole-image inference with 150 classes (text embeddings cached): processor, model, post-processing;
- slide150 / slide847: the paper's sliding-window protocol (4 tiles + a global view in one batch), 150 / 847
  classes (847 exercises the top-256 path), text cached, post-processing to a label map included.

Class names come from the benchmark lists in `$CATSEG_SHARED_DIR/benchmarks` (ade150.json, ade847.json) when
present, else synthetic names. Each case warms up once, then runs `--runs` times; reported: median/min/max seconds
and the peak resident memory of the case's process (which includes the loaded model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "text150": ("text", 150, None),
    "text847": ("text", 847, None),
    "whole150": ("image", 150, "whole"),
    "slide150": ("image", 150, "sliding"),
    "slide847": ("image", 847, "sliding"),
}


def class_names(count: int) -> list[str]:
    shared = Path(os.environ.get("CATSEG_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    source = shared / "benchmarks" / ("ade150.json" if count == 150 else "ade847.json")
    if source.is_file():
        names = json.loads(source.read_text())
        if len(names) == count:
            return names
    return [f"object number {i}" for i in range(count)]


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(args: argparse.Namespace) -> dict:
    """Runs one case in this process and returns its measurements."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from catseg_hf import CATSegForSemanticSegmentation, CATSegProcessor

    model = CATSegForSemanticSegmentation.from_pretrained(args.model).eval()
    processor = CATSegProcessor.from_pretrained(args.model)
    kind, count, mode = CASES[args.case]
    names = class_names(count)
    text = processor(text=names, return_tensors="pt")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    image = np.random.default_rng(0).integers(0, 256, size=(512, 683, 3), dtype=np.uint8)

    if kind == "text":

        def step():
            with torch.no_grad(), autocast:
                model.get_class_embeddings(text["input_ids"], text["attention_mask"])

    else:
        with torch.no_grad(), autocast:
            class_embeddings = model.get_class_embeddings(text["input_ids"], text["attention_mask"])

        def step():
            inputs = processor(images=image, mode=mode, return_tensors="pt")
            with torch.no_grad(), autocast:
                outputs = model(**inputs, class_embeddings=class_embeddings)
            processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])

    step()  # warm-up
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "case": args.case,
        "dtype": args.dtype,
        "threads": args.threads,
        "runs": args.runs,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "peak_rss_gb": peak_rss_bytes() / 2**30,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder with processor (make_random_checkpoint.py)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)

    if args.case:
        print(json.dumps(run_case(args)))
        return 0

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    results = []
    print(f"{'case':10s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'peak RSS GB':>12s}")
    for case in cases:
        command = [
            sys.executable, __file__, "--model", args.model, "--case", case, "--runs", str(args.runs),
            "--threads", str(args.threads), "--dtype", args.dtype,
        ]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            print(f"{case}: failed\n{completed.stderr[-2000:]}", file=sys.stderr)
            return 1
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{case:10s} {result['median_s']:9.2f} {result['min_s']:8.2f} {result['max_s']:8.2f} "
            f"{result['peak_rss_gb']:12.2f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
