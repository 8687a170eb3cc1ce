"""Benchmark evaluation of a CAT-Seg model with the official protocol: the library behind `scripts/evaluate.py`.

For every benchmark (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b, and COCO-Stuff) the steps are those of the
official CAT-Seg evaluation (detectron2's test mapper + `sem_seg_postprocess` + `SemSegEvaluator`):

1. each test image is resized so that its shorter side is 640 (longer side at most 2560; detectron2's
   `ResizeShortestEdge(640, 2560)`, bilinear on uint8 as detectron2 does for images);
2. the processor cuts the resized image into its sliding-window views (default) or one whole view;
3. the class names of the benchmark (in label-id order) are put into the *model's* prompt templates and encoded
   once per benchmark (a [`catseg_hf.vocabulary.Vocabulary`]); the model runs in eval mode, hence with 1x1 class-aggregation
   pooling;
4. the processor's post-processing brings the scores back to the size of the annotation (the original image size),
   arg-max gives the label map, PAS-20b folds its extra prompts into "background";
5. predictions and annotations are accumulated in one [`catseg_hf.evaluation.StreamingMeanIoU`] per benchmark;
   under `accelerate launch` every process takes a strided share of the images and the confusion matrices are
   summed across processes before scoring.

Two mIoU flavours are reported, clearly labelled: `mean_iou` with the Hugging Face `evaluate` `mean_iou`
semantics (the primary number; a class predicted somewhere but absent from every annotation counts as IoU 0), and the
detectron2-style mIoU (average over classes present in the annotations), which is what the paper's numbers are.

Data come either from the official folder layout (`datasets/README.md` of the official CAT-Seg repository) under a
data root, with the paths of [`catseg_hf.evaluation.benchmarks`], or from any parquet / `save_to_disk` / Hub
dataset through [`catseg_hf.data.load_segmentation_dataset`].

The pieces live by job: `.sources` (options and data sources), `.loop` (one benchmark's evaluation), `.reports`
(table and files); this module loads the model and runs them over the benchmarks. Its public names stay importable
from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .benchmarks import PAPER_BENCHMARKS, Benchmark, load_class_names
from .loop import (
    TEST_MAX_SIZE,
    TEST_SHORT_EDGE,
    BenchmarkResult,
    _json_float,
    check_annotation_ids,
    evaluate_benchmark,
    predict_label_maps,
    prepare_label,
    prepare_test_image,
    scoring_class_names,
)
from .metrics import StreamingMeanIoU
from .reports import _percent, format_results_table, infer_variant, write_results
from .sources import (
    HUB_SOURCE_KEYWORD,
    DataSource,
    EvaluationSetupError,
    _one_line,
    check_data_source,
    load_benchmark_data,
    parse_benchmark_list,
    parse_keyed_values,
    resolve_data_source,
)

__all__ = [
    "EvaluationSetupError",
    "DataSource",
    "EvaluationOptions",
    "BenchmarkResult",
    "TEST_SHORT_EDGE",
    "TEST_MAX_SIZE",
    "parse_benchmark_list",
    "parse_keyed_values",
    "resolve_data_source",
    "check_data_source",
    "load_benchmark_data",
    "infer_variant",
    "prepare_test_image",
    "prepare_label",
    "check_annotation_ids",
    "predict_label_maps",
    "scoring_class_names",
    "evaluate_benchmark",
    "format_results_table",
    "write_results",
    "run_evaluation",
]

#: detectron2 test-time `ResizeShortestEdge` of the official CAT-Seg configs (`INPUT.MIN_SIZE_TEST` /


@dataclass
class EvaluationOptions:
    """Everything `scripts/evaluate.py` passes to [`run_evaluation`] (see its `--help`)."""

    model: str
    benchmarks: Sequence[str | Benchmark] = PAPER_BENCHMARKS
    data_root: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    splits: Mapping[str, str] = field(default_factory=dict)
    default_split: str = "validation"
    image_columns: Mapping[str, str] = field(default_factory=dict)
    default_image_column: str | None = None
    label_columns: Mapping[str, str] = field(default_factory=dict)
    default_label_column: str | None = None
    reduce_labels: Sequence[str] = ()
    class_names_dir: str | None = None
    limit: int | None = None
    batch_size: int = 1
    num_workers: int = 0
    device: str = "auto"
    dtype: str = "float32"
    mode: str = "sliding"
    output_dir: str | None = None
    variant: str = "auto"
    model_name: str | None = None
    short_edge: int = TEST_SHORT_EDGE
    max_size: int = TEST_MAX_SIZE


def _make_accelerator(device: str):
    from accelerate import Accelerator

    from ..inference import resolve_device

    try:
        resolved = resolve_device(device)
    except ValueError as error:
        raise EvaluationSetupError(f"--device {_one_line(error)}") from None
    return Accelerator(cpu=(resolved.type == "cpu"))


def _load_model_and_processor(path: str, dtype: str, device: Any):
    import torch

    from .. import CATSegForSemanticSegmentation, CATSegProcessor

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise EvaluationSetupError(f"--dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise EvaluationSetupError(f"{path} is not a model folder: config.json not found (expected a save_pretrained folder)")
    try:
        model = CATSegForSemanticSegmentation.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise EvaluationSetupError(f"cannot load the model from {path}: {_one_line(err)}") from err
    try:
        processor = CATSegProcessor.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        raise EvaluationSetupError(
            f"cannot load a CATSegProcessor (image processor + CLIP tokenizer) from {path}: {_one_line(err)}; convert "
            "the checkpoint with --bpe, or save a CATSegProcessor into the folder"
        ) from err
    if processor.image_processor.clip_resolution != model.config.clip_resolution:
        raise EvaluationSetupError(
            f"the processor in {path} makes {processor.image_processor.clip_resolution}px views but the model expects "
            f"clip_resolution {model.config.clip_resolution}; save a matching processor"
        )
    model = model.to(device=device, dtype=dtypes[dtype]).eval()
    return model, processor


def run_evaluation(options: EvaluationOptions, print_fn: Any = print) -> dict[str, Any]:
    """Evaluate a model folder on several benchmarks, print the table and write the result files.

    Works in a single process or under `accelerate launch` (images sharded across processes, confusion matrices
    summed; only the main process prints and writes). All data sources are checked before the model runs, so a
    missing folder fails at once.

    Returns:
        The content of `results.json` (on every process), with the table under `"table"`.

    Raises:
        EvaluationSetupError: for unusable inputs (one-line message).
    """
    benchmarks = parse_benchmark_list([b.key if isinstance(b, Benchmark) else str(b) for b in options.benchmarks])
    if options.limit is not None and options.limit < 1:
        raise EvaluationSetupError(f"--limit must be >= 1, got {options.limit}")
    if options.mode not in ("sliding", "whole"):
        raise EvaluationSetupError(f"--mode must be sliding or whole, got {options.mode!r}")
    if options.variant not in ("auto", "base", "large", "none"):
        raise EvaluationSetupError(f"--variant must be auto, base, large or none, got {options.variant!r}")
    reduce_keys = {bench.key for bench in parse_benchmark_list(options.reduce_labels)} if options.reduce_labels else set()

    # Cheap checks first: class names and data locations of every benchmark, before loading any model.
    plans = []
    for bench in benchmarks:
        try:
            names = load_class_names(bench, options.class_names_dir)
        except (FileNotFoundError, ValueError) as err:
            raise EvaluationSetupError(_one_line(err)) from err
        source = resolve_data_source(
            bench,
            options.data_root,
            options.sources.get(bench.key),
            split=options.splits.get(bench.key, options.default_split),
            image_column=options.image_columns.get(bench.key, options.default_image_column),
            label_column=options.label_columns.get(bench.key, options.default_label_column),
            reduce_labels=bench.key in reduce_keys,
        )
        check_data_source(bench, source)
        plans.append((bench, names, source))

    accelerator = _make_accelerator(options.device)
    is_main = accelerator.is_main_process
    say = print_fn if is_main else (lambda *args, **kwargs: None)
    # Datasets load lazily (no pixel is decoded here), so every source is opened before the model: an unreachable
    # Hub id or a bad column name fails in seconds. Loading may write a datasets cache (parquet/Hub): the main process
    # goes first so that the others reuse it.
    datasets_by_key = {}
    load_error: EvaluationSetupError | None = None
    with accelerator.main_process_first():
        # The error is raised only after the context's barrier: a process leaving early would hang the others there.
        try:
            for bench, _, source in plans:
                datasets_by_key[bench.key] = load_benchmark_data(bench, source)
        except EvaluationSetupError as err:
            load_error = err
    if load_error is not None:
        raise load_error
    model, processor = _load_model_and_processor(options.model, options.dtype, accelerator.device)
    variant = infer_variant(model.config) if options.variant == "auto" else (None if options.variant == "none" else options.variant)
    model_name = options.model_name or Path(str(options.model).rstrip("/")).name or str(options.model)
    say(
        f"Model {options.model} ({model_name}; variant: {variant or 'unknown'}), device {accelerator.device}, "
        f"{accelerator.num_processes} process(es), mode {options.mode}, batch {options.batch_size}"
    )

    results: list[BenchmarkResult] = []
    for bench, names, source in plans:
        dataset = datasets_by_key[bench.key]
        count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
        say(f"{bench.display_name}: {count} image(s), {bench.num_classes} class names, data {source.location}")
        if source.note:
            say(f"  note: {source.note}")
        result = evaluate_benchmark(
            model,
            processor,
            bench,
            dataset,
            names,
            source=source,
            batch_size=options.batch_size,
            mode=options.mode,
            limit=options.limit,
            num_workers=options.num_workers,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            show_progress=is_main,
            short_edge=options.short_edge,
            max_size=options.max_size,
        )
        scores = result.scores()
        say(
            f"{bench.display_name}: mIoU {_percent(_json_float(scores['hub']['mean_iou']), 100.0)} (hub mean_iou), "
            f"{_percent(_json_float(scores['detectron2']['mIoU']))} (detectron2-style)"
            + (f"; reported {bench.reported_miou(variant)}" if variant and bench.reported_miou(variant) is not None else "")
        )
        results.append(result)

    table = format_results_table(results, model_name, variant)
    run_info = {
        "model": {"path": str(options.model), "name": model_name, "variant": variant},
        "settings": {
            "mode": options.mode,
            "batch_size": options.batch_size,
            "limit": options.limit,
            "device": str(accelerator.device),
            "dtype": options.dtype,
            "num_processes": accelerator.num_processes,
            "test_resize": {"shortest_edge": options.short_edge, "max_size": options.max_size},
        },
    }
    output_dir = options.output_dir or os.path.join("eval_results", model_name)
    if is_main:
        say("")
        say(table)
        written = write_results(output_dir, results, run_info, variant=variant, table=table)
        say(f"Results written to {output_dir}: {', '.join(sorted(written))}")
    accelerator.wait_for_everyone()
    payload = dict(run_info)
    payload["benchmarks"] = {result.benchmark.key: result.summary(variant) for result in results}
    payload["table"] = table
    return payload
