"""Benchmark evaluation of a CAT-Seg model with the official protocol: the library behind ``scripts/evaluate.py``.

For every benchmark (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b, and COCO-Stuff) the steps are those of the
official CAT-Seg evaluation (detectron2's test mapper + ``sem_seg_postprocess`` + ``SemSegEvaluator``):

1. each test image is resized so that its shorter side is 640 (longer side at most 2560; detectron2's
   ``ResizeShortestEdge(640, 2560)``, bilinear on uint8 as detectron2 does for images);
2. the processor cuts the resized image into its sliding-window views (default) or one whole view;
3. the class names of the benchmark (in label-id order) are put into the *model's* prompt templates and encoded
   once per benchmark (a :class:`~catseg_hf.vocabulary.Vocabulary`); the model runs in eval mode, hence with 1x1 class-aggregation
   pooling;
4. the processor's post-processing brings the scores back to the size of the annotation (the original image size),
   arg-max gives the label map, PAS-20b folds its extra prompts into "background";
5. predictions and annotations are accumulated in one :class:`~catseg_hf.evaluation.StreamingMeanIoU` per benchmark;
   under ``accelerate launch`` every process takes a strided share of the images and the confusion matrices are
   summed across processes before scoring.

Two mIoU flavours are reported, clearly labelled: ``mean_iou`` with the Hugging Face ``evaluate`` ``mean_iou``
semantics (the primary number; a class predicted somewhere but absent from every annotation counts as IoU 0), and the
detectron2-style mIoU (average over classes present in the annotations), which is what the paper's numbers are.

Data come either from the official folder layout (``datasets/README.md`` of the official CAT-Seg repository) under a
data root, with the paths of :mod:`catseg_hf.evaluation.benchmarks`, or from any parquet / ``save_to_disk`` / Hub
dataset through :func:`catseg_hf.data.load_segmentation_dataset`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .benchmarks import PAPER_BENCHMARKS, Benchmark, get_benchmark, load_class_names
from .metrics import StreamingMeanIoU

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

#: detectron2 test-time ``ResizeShortestEdge`` of the official CAT-Seg configs (``INPUT.MIN_SIZE_TEST`` /
#: ``INPUT.MAX_SIZE_TEST``).
TEST_SHORT_EDGE = 640
TEST_MAX_SIZE = 2560

#: Reference geometry of the two released models, used to recognise them for the "reported" line of the table:
#: (vision width, vision layers, patch size, CLIP resolution).
_VARIANT_GEOMETRY = {
    "base": (768, 12, 16, 384),
    "large": (1024, 24, 14, 336),
}
_VARIANT_LABELS = {"base": "CAT-Seg base (ViT-B/16)", "large": "CAT-Seg large (ViT-L/14)"}

HUB_SOURCE_KEYWORD = "hub"


class EvaluationSetupError(RuntimeError):
    """A problem with the inputs of an evaluation (missing data folder, bad option, unusable model folder).

    Its message is a single line that says what is wrong and what was expected; ``scripts/evaluate.py`` prints it
    without a traceback.
    """


def _one_line(message: Any) -> str:
    # Loader errors can span several lines (lists of unpaired files); the CLI promises one line.
    return " ".join(str(message).split())


# ==================================================================================================== data sources
@dataclass(frozen=True)
class DataSource:
    """Where the images and annotations of one benchmark come from.

    Attributes:
        kind: ``"layout"`` (official folder layout under ``location``, the data root) or ``"dataset"`` (``location``
            is a parquet file / glob / folder, a ``save_to_disk`` folder or a Hub dataset id).
        location: data root or dataset location.
        split: split of a ``"dataset"`` source.
        image_column, label_column: column names of a ``"dataset"`` source (auto-detected when None).
        reduce_labels: apply the ``reduce_labels`` transform (0 -> ignore, other ids - 1) to a dataset's labels.
        dataset_config: configuration name of a Hub dataset.
        note: caveat shown with the results (e.g. an unverified Hub copy).
    """

    kind: str
    location: str
    split: str = "validation"
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    reduce_labels: bool = False
    dataset_config: Optional[str] = None
    note: str = ""

    def describe(self) -> Dict[str, Any]:
        """A JSON-able description for ``results.json``."""
        info: Dict[str, Any] = {"kind": self.kind, "location": self.location}
        if self.kind == "dataset":
            info.update(
                split=self.split,
                image_column=self.image_column,
                label_column=self.label_column,
                reduce_labels=self.reduce_labels,
                dataset_config=self.dataset_config,
            )
        if self.note:
            info["note"] = self.note
        return info


def parse_benchmark_list(text: Union[str, Sequence[str]]) -> List[Benchmark]:
    """Benchmarks from a comma-separated list of names (aliases allowed); ``"all"`` / ``"paper"`` give the paper's six
    in table order. Duplicates are dropped, the order is kept.

    Raises:
        EvaluationSetupError: for an unknown name (the message lists the valid ones).
    """
    items = [text] if isinstance(text, str) else list(text)
    names = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not names:
        raise EvaluationSetupError("no benchmark given; pass e.g. --benchmarks a847,pc459,a150,pc59,pas20,pas20b")
    benchmarks: List[Benchmark] = []
    for name in names:
        if name.lower() in ("all", "paper"):
            found = [get_benchmark(key) for key in PAPER_BENCHMARKS]
        else:
            try:
                found = [get_benchmark(name)]
            except ValueError as err:
                raise EvaluationSetupError(_one_line(err)) from None
        for bench in found:
            if bench not in benchmarks:
                benchmarks.append(bench)
    return benchmarks


def parse_keyed_values(values: Optional[Iterable[str]], option: str, allow_default: bool = True) -> Tuple[Optional[str], Dict[str, str]]:
    """Parse repeated ``KEY=VALUE`` command-line values, where KEY is a benchmark name (any alias).

    Args:
        values: the raw strings (e.g. ``["a150=/data/ade.parquet", "pc59=org/pc59"]``).
        option: the option's name, for error messages.
        allow_default: accept one value without ``KEY=``, applying to every benchmark.

    Returns:
        ``(default, {benchmark key: value})``.

    Raises:
        EvaluationSetupError: for a malformed value, an unknown benchmark or a repeated key.
    """
    default: Optional[str] = None
    per_key: Dict[str, str] = {}
    for raw in values or ():
        name, sep, value = str(raw).partition("=")
        if not sep:
            if not allow_default:
                raise EvaluationSetupError(f"{option} expects BENCHMARK=VALUE (e.g. a150=/data/ade150.parquet), got {raw!r}")
            if default is not None:
                raise EvaluationSetupError(f"{option} given twice without a benchmark name ({default!r} and {raw!r})")
            default = raw
            continue
        try:
            key = get_benchmark(name.strip()).key
        except ValueError as err:
            raise EvaluationSetupError(f"{option} {raw!r}: {_one_line(err)}") from None
        if not value:
            raise EvaluationSetupError(f"{option} {raw!r}: the value after '=' is empty")
        if key in per_key:
            raise EvaluationSetupError(f"{option} gives {key} twice ({per_key[key]!r} and {value!r})")
        per_key[key] = value
    return default, per_key


def resolve_data_source(
    benchmark: Union[str, Benchmark],
    data_root: Union[str, os.PathLike, None] = None,
    source: Optional[str] = None,
    *,
    split: str = "validation",
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    reduce_labels: bool = False,
) -> DataSource:
    """Decide where a benchmark's data come from.

    Args:
        benchmark: the benchmark (or its name).
        data_root: root of the official layout (default ``$DETECTRON2_DATASETS``, else ``"datasets"``, as the official
            code); used when ``source`` is None.
        source: a parquet path / glob / folder, a ``save_to_disk`` folder, a Hub dataset id, or ``"hub"`` for the
            example Hub copy listed in the registry (:attr:`Benchmark.hub`, unverified unless marked so).
        split, image_column, label_column, reduce_labels: options of a dataset source.
    """
    bench = get_benchmark(benchmark)
    if source is None:
        root = data_root if data_root is not None else os.environ.get("DETECTRON2_DATASETS", "datasets")
        return DataSource(kind="layout", location=str(root))
    if source == HUB_SOURCE_KEYWORD:
        hub = bench.hub
        if hub is None:
            raise EvaluationSetupError(
                f"{bench.display_name}: no example Hub dataset is known; give --source {bench.key}=PARQUET_OR_HUB_ID "
                "or prepare the official layout under --data-root"
            )
        note = "" if hub.verified else (
            f"example Hub copy {hub.dataset_id}: not verified to equal the official benchmark; {hub.note}"
        )
        return DataSource(
            kind="dataset",
            location=hub.dataset_id,
            split=hub.split,
            image_column=image_column or hub.image_column,
            label_column=label_column or hub.label_column,
            reduce_labels=reduce_labels or hub.reduce_labels,
            dataset_config=hub.config,
            note=_one_line(note),
        )
    return DataSource(
        kind="dataset",
        location=str(source),
        split=split,
        image_column=image_column,
        label_column=label_column,
        reduce_labels=reduce_labels,
    )


def check_data_source(benchmark: Union[str, Benchmark], source: DataSource) -> None:
    """Fail early, with one line naming the expected path, when an official-layout folder is missing.

    Dataset sources are checked when they are loaded (a Hub id cannot be checked without loading it).

    Raises:
        EvaluationSetupError: naming the missing folder.
    """
    bench = get_benchmark(benchmark)
    if source.kind != "layout":
        return
    root = Path(source.location)
    for what, path in (("image", bench.image_path(root)), ("annotation", bench.annotation_path(root))):
        if not path.is_dir():
            raise EvaluationSetupError(
                f"{bench.display_name}: {what} folder not found: {path} (expected the official CAT-Seg layout under "
                f"--data-root {root}, as made by the official datasets/prepare_*.py scripts; or pass "
                f"--source {bench.key}=PARQUET_OR_HUB_ID)"
            )


def load_benchmark_data(benchmark: Union[str, Benchmark], source: DataSource):
    """The benchmark's examples as a :class:`datasets.Dataset` with ``image`` / ``label`` columns (decoded lazily).

    Official layout: images of the registry's image folder paired by file stem with the annotations of its annotation
    folder (images without annotation are skipped, as detectron2 only evaluates annotated images; VOC's
    ``JPEGImages`` holds many more). Annotations keep their stored values (16-bit ids and ignore values included).

    Raises:
        EvaluationSetupError: for missing folders or unreadable / unpaired data (one line).
    """
    from ..data.loading import load_segmentation_dataset

    bench = get_benchmark(benchmark)
    check_data_source(bench, source)
    try:
        if source.kind == "layout":
            root = Path(source.location)
            dataset = load_segmentation_dataset(
                image_dir=bench.image_path(root),
                mask_dir=bench.annotation_path(root),
                on_unmatched="skip_images",
                ignore_index=bench.ignore_index,
            )
        else:
            load_kwargs = {"name": source.dataset_config} if source.dataset_config else {}
            dataset = load_segmentation_dataset(
                source.location,
                split=source.split,
                image_column=source.image_column,
                label_column=source.label_column,
                reduce_labels=source.reduce_labels,
                ignore_index=bench.ignore_index,
                **load_kwargs,
            )
    except (OSError, ValueError, TypeError) as err:  # OSError covers missing files and an unreachable Hub
        raise EvaluationSetupError(f"{bench.display_name}: cannot load data from {source.location}: {_one_line(err)}") from err
    if len(dataset) == 0:
        raise EvaluationSetupError(f"{bench.display_name}: the data source {source.location} holds no example")
    return dataset


# ==================================================================================================== model side
def infer_variant(config: Any) -> Optional[str]:
    """``"base"`` / ``"large"`` when the model has the geometry of a released CAT-Seg model, else None.

    Only used to print the officially reported numbers next to the measured ones; weights are not inspected.
    """
    try:
        vision = config.clip_config.vision_config
        geometry = (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, config.clip_resolution)
    except AttributeError:
        return None
    for variant, reference in _VARIANT_GEOMETRY.items():
        if tuple(geometry) == reference:
            return variant
    return None


def prepare_test_image(image: Any, short_edge: int = TEST_SHORT_EDGE, max_size: int = TEST_MAX_SIZE) -> np.ndarray:
    """The official test mapper's image: RGB uint8 ``(H, W, 3)``, shorter side resized to ``short_edge`` (longer side
    at most ``max_size``), bilinear with PIL as detectron2's ``ResizeShortestEdge`` on uint8 images."""
    from ..data.transforms import resize_shortest_edge, to_uint8_rgb

    return resize_shortest_edge(to_uint8_rgb(image), short_edge, max_size)


def prepare_label(label: Any) -> np.ndarray:
    """An annotation as an int64 ``(H, W)`` array with its stored values (16-bit ids and 65535 kept)."""
    from ..data.transforms import to_label_array

    return to_label_array(label).astype(np.int64)


def predict_label_maps(
    model: Any,
    processor: Any,
    pixel_values: Any,
    class_embeddings: Any,
    target_sizes: Sequence[Tuple[int, int]],
    image_sizes: Sequence[Tuple[int, int]],
) -> List[Any]:
    """One forward over a batch of images, then the processor's post-processing to ``target_sizes``.

    Args:
        pixel_values: the processor's ``pixel_values`` for the batch, one row per image (``(N, 3, R, R)`` whole,
            ``(N, V, 3, R, R)`` sliding).
        class_embeddings: ``(T, P, C)``, from a :class:`~catseg_hf.vocabulary.Vocabulary`.
        target_sizes: ``(height, width)`` of each image's annotation.
        image_sizes: ``(height, width)`` of each image as the processor got it (the official whole-mode crop).

    Returns:
        One int64 ``(height, width)`` label map per image, on the model's device.
    """
    import torch

    with torch.no_grad():
        outputs = model(pixel_values=pixel_values.to(device=model.device, dtype=model.dtype), class_embeddings=class_embeddings)
        return processor.post_process_semantic_segmentation(
            outputs, target_sizes=[tuple(s) for s in target_sizes], image_sizes=[tuple(s) for s in image_sizes]
        )


def check_annotation_ids(label: np.ndarray, benchmark: Union[str, Benchmark], index: Any = None) -> None:
    """Stops with a message when an annotation holds ids the benchmark cannot score.

    Every annotated id must be a class (``0 .. num_eval_labels - 1``) or the ignore id; ``mean_iou`` would drop any
    other id silently, which is how a forgotten ``--reduce-labels`` (raw ADE20K ids are 1..150 with 0 for "other")
    turns into an mIoU near zero with exit code 0.

    Raises:
        EvaluationSetupError: naming the offending ids, their pixel count, the example and the likely fix.
    """
    bench = get_benchmark(benchmark)
    num_labels = bench.num_eval_labels
    outside = (label < 0) | (label >= num_labels)
    if bench.ignore_index is not None:
        outside &= label != bench.ignore_index
    if not outside.any():
        return
    ids = np.unique(label[outside])
    shown = ", ".join(str(int(i)) for i in ids[:8]) + (", ..." if len(ids) > 8 else "")
    where = f"example {index}" if index is not None else "an annotation"
    hint = (
        f" (raw ids 1..{num_labels} with 0 for 'other'? pass --reduce-labels {bench.key})"
        if int(ids.max()) == num_labels
        else ""
    )
    raise EvaluationSetupError(
        f"{bench.display_name}: {where} has label id(s) {shown} on {int(outside.sum())} pixel(s), but the benchmark "
        f"scores {num_labels} classes (ids 0..{num_labels - 1}) and ignores {bench.ignore_index}; give annotations in "
        f"the benchmark's ids{hint}."
    )


def scoring_class_names(benchmark: Union[str, Benchmark], class_names: Sequence[str]) -> List[str]:
    """Names of the ``num_eval_labels`` scored classes: the prompted names, except that PAS-20b scores 20 VOC classes
    plus "background" (its 39 extra prompts are folded into it)."""
    bench = get_benchmark(benchmark)
    names = list(class_names[: bench.num_eval_labels])
    if bench.background_index is not None:
        names[bench.background_index] = "background"
    return names


class _BenchmarkItems:
    """Map-style dataset of one process's share of a benchmark: decodes an example, applies the test resize and the
    processor's view extraction (so that DataLoader workers do this CPU work), keeps the annotation as is."""

    def __init__(self, dataset: Any, indices: Sequence[int], image_processor: Any, mode: str, short_edge: int, max_size: int):
        self.dataset = dataset
        self.indices = list(indices)
        self.image_processor = image_processor
        self.mode = mode
        self.short_edge = short_edge
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Dict[str, Any]:
        index = self.indices[position]
        example = self.dataset[index]
        if example.get("label") is None:
            raise ValueError(f"example {index} has no annotation")
        label = prepare_label(example["label"])
        image = prepare_test_image(example["image"], self.short_edge, self.max_size)
        views = self.image_processor(image, mode=self.mode, return_tensors="pt")
        return {
            "index": index,
            "pixel_values": views["pixel_values"][0],
            "image_size": tuple(image.shape[:2]),
            "label": label,
        }


def _collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Images stacked along dim 0 (each image's views stay in its row); annotations of any size as a list."""
    import torch

    return {
        "indices": [item["index"] for item in items],
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "image_sizes": [item["image_size"] for item in items],
        "labels": [item["label"] for item in items],
    }


# ==================================================================================================== evaluation
@dataclass
class BenchmarkResult:
    """Scores of one benchmark (after the reduction across processes, so identical on every process)."""

    benchmark: Benchmark
    metric: StreamingMeanIoU
    class_names: List[str]
    num_images: int
    seconds: float
    source: DataSource
    settings: Dict[str, Any] = field(default_factory=dict)

    def scores(self) -> Dict[str, Any]:
        """Hub-semantics metrics (fractions) and detectron2-style metrics (percent)."""
        hub = self.metric.compute()
        d2 = self.metric.compute_detectron2()
        return {"hub": hub, "detectron2": d2}

    def summary(self, variant: Optional[str] = None) -> Dict[str, Any]:
        """The JSON-able entry of ``results.json`` for this benchmark."""
        scores = self.scores()
        hub, d2 = scores["hub"], scores["detectron2"]
        reported = self.benchmark.reported_miou(variant) if variant else None
        return {
            "display_name": self.benchmark.display_name,
            "mean_iou": _json_float(hub["mean_iou"]),
            "mean_accuracy": _json_float(hub["mean_accuracy"]),
            "overall_accuracy": _json_float(hub["overall_accuracy"]),
            "detectron2": {
                "mIoU": _json_float(d2["mIoU"]),
                "mACC": _json_float(d2["mACC"]),
                "pACC": _json_float(d2["pACC"]),
                "fwIoU": _json_float(d2["fwIoU"]),
            },
            "num_images": self.num_images,
            "num_classes": self.benchmark.num_classes,
            "num_scored_classes": self.benchmark.num_eval_labels,
            "num_counted_pixels": self.metric.num_counted_pixels,
            "reported_miou": reported,
            "seconds": round(self.seconds, 3),
            "data_source": self.source.describe(),
            "settings": self.settings,
            "per_class_csv": f"{self.benchmark.key}_per_class.csv",
        }

    def per_class_rows(self) -> List[Dict[str, Any]]:
        """One row per scored class: id, name, IoU and accuracy (hub semantics, fractions; None where undefined),
        and the pixel counts they come from."""
        hub = self.metric.compute()
        areas = self.metric.areas()
        names = scoring_class_names(self.benchmark, self.class_names)
        return [
            {
                "class_id": class_id,
                "name": names[class_id],
                "iou": _json_float(hub["per_category_iou"][class_id]),
                "accuracy": _json_float(hub["per_category_accuracy"][class_id]),
                "reference_pixels": int(areas["area_label"][class_id]),
                "predicted_pixels": int(areas["area_pred_label"][class_id]),
            }
            for class_id in range(self.benchmark.num_eval_labels)
        ]


def _json_float(value: Any) -> Optional[float]:
    """A float for JSON / CSV; NaN (undefined) becomes None, since JSON has no NaN."""
    value = float(value)
    return None if math.isnan(value) else value


def evaluate_benchmark(
    model: Any,
    processor: Any,
    benchmark: Union[str, Benchmark],
    dataset: Any,
    class_names: Sequence[str],
    *,
    source: Optional[DataSource] = None,
    batch_size: int = 1,
    mode: str = "sliding",
    limit: Optional[int] = None,
    num_workers: int = 0,
    process_index: int = 0,
    num_processes: int = 1,
    show_progress: bool = True,
    short_edge: int = TEST_SHORT_EDGE,
    max_size: int = TEST_MAX_SIZE,
) -> BenchmarkResult:
    """Evaluate ``model`` on one benchmark with the official protocol (see the module docstring).

    Args:
        model: a :class:`~catseg_hf.CATSegForSemanticSegmentation` in eval mode, on its device.
        processor: the matching :class:`~catseg_hf.CATSegProcessor`.
        benchmark: the benchmark (or its name).
        dataset: its examples (``image`` / ``label`` columns), e.g. from :func:`load_benchmark_data`.
        class_names: the benchmark's class names, in label-id order (``len == benchmark.num_classes``).
        source: where the data came from (recorded in the results).
        batch_size: images per forward (their views are concatenated in one batch).
        mode: ``"sliding"`` (official) or ``"whole"``.
        limit: evaluate only the first ``limit`` examples (in the dataset's order).
        num_workers: DataLoader workers decoding and resizing the images.
        process_index, num_processes: this process's rank and the world size; process ``r`` takes the examples
            ``r, r + n, r + 2n, ...`` and the confusion matrices are summed over processes
            (:meth:`StreamingMeanIoU.reduce_across_processes`, a no-op without ``torch.distributed``).
        show_progress: draw a tqdm bar (only the main process should).
        short_edge, max_size: the test-time resize (official: 640, 2560).

    Returns:
        A :class:`BenchmarkResult` holding the global (all-process) counts.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    bench = get_benchmark(benchmark)
    if len(class_names) != bench.num_classes:
        raise EvaluationSetupError(
            f"{bench.display_name} needs {bench.num_classes} class names, got {len(class_names)}"
        )
    if batch_size < 1:
        raise EvaluationSetupError(f"batch size must be >= 1, got {batch_size}")
    if mode not in ("sliding", "whole"):
        raise EvaluationSetupError(f"mode must be 'sliding' or 'whole', got {mode!r}")
    if model.training:
        # Training mode would pool 2x2 before the class aggregation, not the official 1x1.
        model.eval()

    total = len(dataset) if limit is None else min(int(limit), len(dataset))
    shard = list(range(process_index, total, num_processes))
    items = _BenchmarkItems(dataset, shard, processor.image_processor, mode, short_edge, max_size)
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate)

    from ..vocabulary import Vocabulary

    start = time.perf_counter()
    templates = list(getattr(model.config, "prompt_templates", None) or processor.prompt_templates)
    class_embeddings = Vocabulary.encode(model, processor, class_names, prompt_templates=templates).class_embeddings
    metric = StreamingMeanIoU(**bench.metric_kwargs())
    with tqdm(total=len(shard), desc=bench.display_name, unit="img", disable=not show_progress, dynamic_ncols=True) as bar:
        for batch in loader:
            labels = batch["labels"]
            predictions = predict_label_maps(
                model,
                processor,
                batch["pixel_values"],
                class_embeddings,
                target_sizes=[label.shape for label in labels],
                image_sizes=batch["image_sizes"],
            )
            for index, prediction, label in zip(batch["indices"], predictions, labels):
                check_annotation_ids(label, bench, index)
                metric.update(bench.fold_predictions(prediction), torch.from_numpy(label).to(prediction.device))
            bar.update(len(labels))
    metric.reduce_across_processes()
    seconds = time.perf_counter() - start

    image_processor = processor.image_processor
    settings = {
        "mode": mode,
        "test_resize": {"shortest_edge": short_edge, "max_size": max_size},
        "sliding_window": {
            "canvas": image_processor.sliding_canvas_size,
            "tile": image_processor.sliding_tile_size,
            "stride": image_processor.sliding_stride,
        }
        if mode == "sliding"
        else None,
        "clip_resolution": image_processor.clip_resolution,
        "prompt_templates": list(getattr(model.config, "prompt_templates", None) or processor.prompt_templates),
        "class_aggregation_pooling": list(model.pooling_size) if hasattr(model, "pooling_size") else None,
        "class_names_file": bench.class_names_file,
        "ignore_index": bench.ignore_index,
        "folded_into_background": bench.background_index,
        "batch_size": batch_size,
        "limit": limit,
        "num_processes": num_processes,
        "dtype": str(model.dtype).replace("torch.", ""),
        "device": str(model.device),
    }
    return BenchmarkResult(
        benchmark=bench,
        metric=metric,
        class_names=list(class_names),
        num_images=total,
        seconds=seconds,
        source=source or DataSource(kind="dataset", location="<in-memory>"),
        settings=settings,
    )


# ==================================================================================================== reporting
def _percent(value: Optional[float], scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.1f}"


def format_results_table(
    results: Sequence[BenchmarkResult], model_name: str, variant: Optional[str] = None
) -> str:
    """The paper-style table (Markdown): the paper's six columns (plus any other benchmark evaluated), numbers in %
    with one decimal, ``-`` where not evaluated.

    Rows: the model's mIoU with the hub ``mean_iou`` semantics (primary), its detectron2-style mIoU (the paper's
    averaging), and, when ``variant`` is known, the official numbers reported by CAT-Seg's authors.
    """
    by_key = {result.benchmark.key: result for result in results}
    columns = list(PAPER_BENCHMARKS) + [key for key in by_key if key not in PAPER_BENCHMARKS]
    headers = ["model", "metric"] + [get_benchmark(key).display_name for key in columns]
    hub_row = [model_name, "mIoU (hub mean_iou)"]
    d2_row = [model_name, "mIoU (detectron2-style)"]
    for key in columns:
        result = by_key.get(key)
        if result is None:
            hub_row.append("-")
            d2_row.append("-")
            continue
        scores = result.scores()
        hub_row.append(_percent(_json_float(scores["hub"]["mean_iou"]), 100.0))
        d2_row.append(_percent(_json_float(scores["detectron2"]["mIoU"])))
    rows = [hub_row, d2_row]
    if variant in _VARIANT_LABELS:
        reported = [_VARIANT_LABELS[variant] + ", reported by the original authors", "mIoU (detectron2)"]
        for key in columns:
            reported.append(_percent(get_benchmark(key).reported_miou(variant)))
        rows.append(reported)
    widths = [max(len(str(row[i])) for row in [headers] + rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    out = [line(headers), "|" + "|".join("-" * (width + 2) for width in widths) + "|"]
    out += [line(row) for row in rows]
    out.append(
        "hub mean_iou: Hugging Face evaluate mean_iou semantics (a class predicted but absent from every annotation "
        "counts as IoU 0); detectron2-style: mean over the classes present in the annotations, as in the paper."
    )
    if variant in _VARIANT_LABELS:
        out.append("Reported numbers: official CAT-Seg README (not measured here).")
    images = ", ".join(f"{r.benchmark.display_name}: {r.num_images}" for r in results)
    out.append(f"Images evaluated: {images}.")
    return "\n".join(out)


def write_results(
    output_dir: Union[str, os.PathLike],
    results: Sequence[BenchmarkResult],
    run_info: Mapping[str, Any],
    variant: Optional[str] = None,
    table: Optional[str] = None,
) -> Dict[str, Path]:
    """Write ``results.json``, ``<key>_per_class.csv`` per benchmark and (when given) ``results.md`` (the table).

    Returns:
        The written paths, by name.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    payload = dict(run_info)
    payload["units"] = {
        "mean_iou, mean_accuracy, overall_accuracy, per-class iou/accuracy": "fraction (0-1), hub mean_iou semantics",
        "detectron2, reported_miou": "percent, detectron2 SemSegEvaluator averaging (classes present in annotations)",
    }
    payload["benchmarks"] = {result.benchmark.key: result.summary(variant) for result in results}
    json_path = output / "results.json"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    written["results.json"] = json_path
    for result in results:
        csv_path = output / f"{result.benchmark.key}_per_class.csv"
        rows = result.per_class_rows()
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        written[csv_path.name] = csv_path
    if table is not None:
        md_path = output / "results.md"
        md_path.write_text(table + "\n", encoding="utf-8")
        written["results.md"] = md_path
    return written


# ==================================================================================================== whole run
@dataclass
class EvaluationOptions:
    """Everything ``scripts/evaluate.py`` passes to :func:`run_evaluation` (see its ``--help``)."""

    model: str
    benchmarks: Sequence[Union[str, Benchmark]] = PAPER_BENCHMARKS
    data_root: Optional[str] = None
    sources: Mapping[str, str] = field(default_factory=dict)
    splits: Mapping[str, str] = field(default_factory=dict)
    default_split: str = "validation"
    image_columns: Mapping[str, str] = field(default_factory=dict)
    default_image_column: Optional[str] = None
    label_columns: Mapping[str, str] = field(default_factory=dict)
    default_label_column: Optional[str] = None
    reduce_labels: Sequence[str] = ()
    class_names_dir: Optional[str] = None
    limit: Optional[int] = None
    batch_size: int = 1
    num_workers: int = 0
    device: str = "auto"
    dtype: str = "float32"
    mode: str = "sliding"
    output_dir: Optional[str] = None
    variant: str = "auto"
    model_name: Optional[str] = None
    short_edge: int = TEST_SHORT_EDGE
    max_size: int = TEST_MAX_SIZE


def _make_accelerator(device: str):
    import torch
    from accelerate import Accelerator

    if device not in ("auto", "cpu", "cuda"):
        raise EvaluationSetupError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise EvaluationSetupError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    return Accelerator(cpu=(device == "cpu"))


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


def run_evaluation(options: EvaluationOptions, print_fn: Any = print) -> Dict[str, Any]:
    """Evaluate a model folder on several benchmarks, print the table and write the result files.

    Works in a single process or under ``accelerate launch`` (images sharded across processes, confusion matrices
    summed; only the main process prints and writes). All data sources are checked before the model runs, so a
    missing folder fails at once.

    Returns:
        The content of ``results.json`` (on every process), with the table under ``"table"``.

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
    load_error: Optional[EvaluationSetupError] = None
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

    results: List[BenchmarkResult] = []
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
