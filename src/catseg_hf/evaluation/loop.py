"""The evaluation loop of one benchmark: test-time resizing, prediction, annotation checks and the streaming mIoU.

The steps are those of the official CAT-Seg evaluation (detectron2's test mapper + `sem_seg_postprocess` +
`SemSegEvaluator`); see `catseg_hf.evaluation.runner` for the whole protocol.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .benchmarks import Benchmark, get_benchmark
from .metrics import StreamingMeanIoU
from .sources import DataSource, EvaluationSetupError

#: detectron2 test-time `ResizeShortestEdge` of the official CAT-Seg configs (`INPUT.MIN_SIZE_TEST` /
#: `INPUT.MAX_SIZE_TEST`).
TEST_SHORT_EDGE = 640
TEST_MAX_SIZE = 2560


def prepare_test_image(image: Any, short_edge: int = TEST_SHORT_EDGE, max_size: int = TEST_MAX_SIZE) -> np.ndarray:
    """The official test mapper's image: RGB uint8 `(H, W, 3)`, shorter side resized to `short_edge` (longer side
    at most `max_size`), bilinear with PIL as detectron2's `ResizeShortestEdge` on uint8 images."""
    from ..data.transforms import resize_shortest_edge, to_uint8_rgb

    return resize_shortest_edge(to_uint8_rgb(image), short_edge, max_size)


def prepare_label(label: Any) -> np.ndarray:
    """An annotation as an int64 `(H, W)` array with its stored values (16-bit ids and 65535 kept)."""
    from ..data.transforms import to_label_array

    return to_label_array(label).astype(np.int64)


def predict_label_maps(
    model: Any,
    processor: Any,
    pixel_values: Any,
    class_embeddings: Any,
    target_sizes: Sequence[tuple[int, int]],
    image_sizes: Sequence[tuple[int, int]],
) -> list[Any]:
    """One forward over a batch of images, then the processor's post-processing to `target_sizes`.

    Args:
        pixel_values (`Any`):
            The processor's `pixel_values` for the batch, one row per image (`(N, 3, R, R)` whole,
            `(N, V, 3, R, R)` sliding).
        class_embeddings (`Any`):
            `(T, P, C)`, from a [`catseg_hf.vocabulary.Vocabulary`].
        target_sizes (`Sequence[tuple[int, int]]`):
            `(height, width)` of each image's annotation.
        image_sizes (`Sequence[tuple[int, int]]`):
            `(height, width)` of each image as the processor got it (the official whole-mode crop).

    Returns:
        One int64 `(height, width)` label map per image, on the model's device.
    """
    from ..inference import predict_logits, to_label_maps

    logits = predict_logits(model, pixel_values, class_embeddings)
    return to_label_maps(processor, logits, image_sizes, target_sizes)


def check_annotation_ids(label: np.ndarray, benchmark: str | Benchmark, index: Any = None) -> None:
    """Stops with a message when an annotation holds ids the benchmark cannot score.

    Every annotated id must be a class (`0 .. num_eval_labels - 1`) or the ignore id; `mean_iou` would drop any
    other id silently, which is how a forgotten `--reduce-labels` (raw ADE20K ids are 1..150 with 0 for "other")
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


def scoring_class_names(benchmark: str | Benchmark, class_names: Sequence[str]) -> list[str]:
    """Names of the `num_eval_labels` scored classes: the prompted names, except that PAS-20b scores 20 VOC classes
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

    def __getitem__(self, position: int) -> dict[str, Any]:
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


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
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
    class_names: list[str]
    num_images: int
    seconds: float
    source: DataSource
    settings: dict[str, Any] = field(default_factory=dict)

    def scores(self) -> dict[str, Any]:
        """Hub-semantics metrics (fractions) and detectron2-style metrics (percent)."""
        hub = self.metric.compute()
        d2 = self.metric.compute_detectron2()
        return {"hub": hub, "detectron2": d2}

    def summary(self, variant: str | None = None) -> dict[str, Any]:
        """The JSON-able entry of `results.json` for this benchmark."""
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

    def per_class_rows(self) -> list[dict[str, Any]]:
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


def _json_float(value: Any) -> float | None:
    """A float for JSON / CSV; NaN (undefined) becomes None, since JSON has no NaN."""
    value = float(value)
    return None if math.isnan(value) else value


def evaluate_benchmark(
    model: Any,
    processor: Any,
    benchmark: str | Benchmark,
    dataset: Any,
    class_names: Sequence[str],
    *,
    source: DataSource | None = None,
    batch_size: int = 1,
    mode: str = "sliding",
    limit: int | None = None,
    num_workers: int = 0,
    process_index: int = 0,
    num_processes: int = 1,
    show_progress: bool = True,
    short_edge: int = TEST_SHORT_EDGE,
    max_size: int = TEST_MAX_SIZE,
) -> BenchmarkResult:
    """Evaluate `model` on one benchmark with the official protocol (see the module docstring).

    Args:
        model (`Any`):
            A [`catseg_hf.CATSegForSemanticSegmentation`] in eval mode, on its device.
        processor (`Any`):
            The matching [`catseg_hf.CATSegProcessor`].
        benchmark (`str | Benchmark`):
            The benchmark (or its name).
        dataset (`Any`):
            Its examples (`image` / `label` columns), e.g. from [`load_benchmark_data`].
        class_names (`Sequence[str]`):
            The benchmark's class names, in label-id order (`len == benchmark.num_classes`).
        source (`DataSource`, *optional*):
            Where the data came from (recorded in the results).
        batch_size (`int`, *optional*, defaults to `1`):
            Images per forward (their views are concatenated in one batch).
        mode (`str`, *optional*, defaults to `"sliding"`):
            `"sliding"` (official) or `"whole"`.
        limit (`int`, *optional*):
            Evaluate only the first `limit` examples (in the dataset's order).
        num_workers (`int`, *optional*, defaults to `0`):
            DataLoader workers decoding and resizing the images.
        process_index (`int`, *optional*, defaults to `0`):
            This process's rank `r`: it takes the examples `r, r + n, r + 2n, ...`.
        num_processes (`int`, *optional*, defaults to `1`):
            The world size `n`; the confusion matrices are summed over processes
            ([`StreamingMeanIoU.reduce_across_processes`], a no-op without `torch.distributed`).
        show_progress (`bool`, *optional*, defaults to `True`):
            Draw a tqdm bar (only the main process should).
        short_edge (`int`, *optional*, defaults to `TEST_SHORT_EDGE`):
            Shorter side of the test-time resize (official: 640).
        max_size (`int`, *optional*, defaults to `TEST_MAX_SIZE`):
            Cap on the longer side of the test-time resize (official: 2560).

    Returns:
        A [`BenchmarkResult`] holding the global (all-process) counts.
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
