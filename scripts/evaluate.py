#!/usr/bin/env python
"""Evaluate a CAT-Seg model on the paper's benchmarks with the official protocol.

Each test image's shorter side is resized to 640 (longer side <= 2560), the processor's sliding window runs the model
on the benchmark's class names (in the model's prompt templates, embedded once per benchmark), the scores are brought
back to the annotation size and arg-maxed (PAS-20b folds its extra prompts into "background"), and a mean-IoU
confusion matrix is accumulated. Prints the paper-style table and writes results.json, results.md and one
<benchmark>_per_class.csv per benchmark.

Examples:
    # official folder layout (the official CAT-Seg datasets/README.md) under $DETECTRON2_DATASETS or --data-root
    python scripts/evaluate.py --model catseg-base --benchmarks a847,pc459,a150,pc59,pas20,pas20b \\
        --data-root /data/datasets --batch-size 4 --output-dir eval/catseg-base

    # several GPUs: images are sharded, confusion matrices summed
    accelerate launch --num_processes 8 scripts/evaluate.py --model catseg-large --benchmarks all --data-root /data

    # a parquet copy / Hub dataset instead of the folder layout (columns auto-detected or given)
    python scripts/evaluate.py --model catseg-base --benchmarks a150 --source a150=/data/ade150_val.parquet \\
        --image-column a150=image --label-column a150=annotation

mean_iou (primary) follows the Hugging Face evaluate mean_iou semantics; the detectron2-style mIoU (mean over the
classes present in the annotations) is the averaging behind the paper's numbers. Both are reported.
"""

from __future__ import annotations

import argparse
import sys

from catseg_hf.evaluation.runner import (
    EvaluationOptions,
    EvaluationSetupError,
    TEST_MAX_SIZE,
    TEST_SHORT_EDGE,
    parse_benchmark_list,
    parse_keyed_values,
    run_evaluation,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model folder (save_pretrained, with the processor) or Hub id")
    parser.add_argument(
        "--benchmarks",
        default="all",
        help="comma-separated benchmarks: a847,pc459,a150,pc59,pas20,pas20b (aliases such as ade150 work; "
        "'all' = the paper's six; coco_stuff also available). Default: all",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="root of the official dataset layout (default: $DETECTRON2_DATASETS, else ./datasets)",
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="BENCH=SOURCE",
        help="read BENCH from a parquet file/glob/folder, a save_to_disk folder or a Hub dataset id instead of the "
        "folder layout; SOURCE 'hub' uses the registry's example Hub copy (unverified). Repeatable",
    )
    parser.add_argument(
        "--split", action="append", default=[], metavar="[BENCH=]NAME",
        help="split of --source datasets (default: validation). Repeatable, per benchmark or for all",
    )
    parser.add_argument(
        "--image-column", action="append", default=[], metavar="[BENCH=]NAME",
        help="image column of --source datasets (default: auto-detected)",
    )
    parser.add_argument(
        "--label-column", action="append", default=[], metavar="[BENCH=]NAME",
        help="annotation column of --source datasets (default: auto-detected)",
    )
    parser.add_argument(
        "--reduce-labels", action="append", default=[], metavar="BENCH",
        help="apply reduce_labels (0 -> ignore, other ids - 1) to BENCH's --source labels, e.g. for raw ADE20K ids",
    )
    parser.add_argument(
        "--class-names-dir",
        default=None,
        help="folder with the class-name JSON files (default: $CATSEG_SHARED_DIR/benchmarks or ../shared/benchmarks)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of each benchmark")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward (default: 1)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images (default: 0)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
        help="model dtype (default: float32, as the official evaluation)",
    )
    parser.add_argument(
        "--mode", choices=["sliding", "whole"], default="sliding",
        help="sliding window (official, default) or one whole-image view",
    )
    parser.add_argument("--output-dir", default=None, help="where to write the results (default: eval_results/<model name>)")
    parser.add_argument(
        "--variant", choices=["auto", "base", "large", "none"], default="auto",
        help="which official numbers to print for reference (default: recognised from the model's geometry)",
    )
    parser.add_argument("--model-name", default=None, help="row label in the table (default: the model folder's name)")
    parser.add_argument("--short-edge", type=int, default=TEST_SHORT_EDGE, help=argparse.SUPPRESS)
    parser.add_argument("--max-size", type=int, default=TEST_MAX_SIZE, help=argparse.SUPPRESS)
    return parser


def options_from_args(args: argparse.Namespace) -> EvaluationOptions:
    """Turn the parsed command line into :class:`EvaluationOptions` (validating the per-benchmark values)."""
    _, sources = parse_keyed_values(args.source, "--source", allow_default=False)
    default_split, splits = parse_keyed_values(args.split, "--split")
    default_image, image_columns = parse_keyed_values(args.image_column, "--image-column")
    default_label, label_columns = parse_keyed_values(args.label_column, "--label-column")
    benchmarks = parse_benchmark_list(args.benchmarks)
    selected = {bench.key for bench in benchmarks}
    unused = sorted(set(sources) - selected)
    if unused:
        raise EvaluationSetupError(f"--source given for {', '.join(unused)}, which is not in --benchmarks")
    reduce_labels = [name for item in args.reduce_labels for name in item.split(",") if name.strip()]
    return EvaluationOptions(
        model=args.model,
        benchmarks=benchmarks,
        data_root=args.data_root,
        sources=sources,
        splits=splits,
        default_split=default_split or "validation",
        image_columns=image_columns,
        default_image_column=default_image,
        label_columns=label_columns,
        default_label_column=default_label,
        reduce_labels=reduce_labels,
        class_names_dir=args.class_names_dir,
        limit=args.limit,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=args.dtype,
        mode=args.mode,
        output_dir=args.output_dir,
        variant=args.variant,
        model_name=args.model_name,
        short_edge=args.short_edge,
        max_size=args.max_size,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run_evaluation(options_from_args(args))
    except EvaluationSetupError as err:
        # Input problems get one line, no traceback; anything else is a bug and keeps its traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
