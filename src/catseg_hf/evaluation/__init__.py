"""Evaluation tools for catseg-hf: re-exports the mean-IoU metric and the benchmark registry.

* [`StreamingMeanIoU`]: mean IoU with the Hugging Face hub `mean_iou` semantics, accumulated
  in one confusion matrix (NumPy or torch, any device), mergeable across processes.
* [`mean_iou_metric_path`]: absolute path of the same metric as an `evaluate` script, for
  `evaluate.load(mean_iou_metric_path())`.
* [`get_benchmark`], [`list_benchmarks`], [`load_class_names`]: the benchmarks CAT-Seg
  reports (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b) and COCO-Stuff, from the one registry
  (`.benchmarks`; `OFFICIAL_LAYOUTS` for training folders is a view of it).
* `.runner` runs the official protocol (`scripts/evaluate.py`), from `.sources` (options, data sources),
  `.loop` (one benchmark) and `.reports` (table, files).

This subpackage itself imports neither `evaluate` nor `datasets` (slow imports): only
`evaluate.load(mean_iou_metric_path())` pays for them. It needs torch only when given tensors.
"""

from .benchmarks import (
    BENCHMARKS,
    PAPER_BENCHMARKS,
    REPORTED_MIOU,
    Benchmark,
    HubSource,
    default_class_names_dir,
    get_benchmark,
    list_benchmarks,
    load_class_names,
    OFFICIAL_LAYOUTS,
    OfficialLayout,
)
from .metrics import PAD_INDEX, StreamingMeanIoU, mean_iou_metric_path

__all__ = [
    "StreamingMeanIoU",
    "mean_iou_metric_path",
    "PAD_INDEX",
    "Benchmark",
    "HubSource",
    "BENCHMARKS",
    "PAPER_BENCHMARKS",
    "REPORTED_MIOU",
    "get_benchmark",
    "list_benchmarks",
    "load_class_names",
    "default_class_names_dir",
    "OFFICIAL_LAYOUTS",
    "OfficialLayout",
]
