"""Evaluation tools for catseg-hf: the mean-IoU metric and the benchmark registry.

* :class:`StreamingMeanIoU`: mean IoU with the Hugging Face hub ``mean_iou`` semantics, accumulated
  in one confusion matrix (NumPy or torch, any device), mergeable across processes.
* :func:`mean_iou_metric_path`: absolute path of the same metric as an ``evaluate`` script, for
  ``evaluate.load(mean_iou_metric_path())``.
* :func:`get_benchmark`, :func:`list_benchmarks`, :func:`load_class_names`: the benchmarks CAT-Seg
  reports (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b) and COCO-Stuff.

This subpackage itself imports neither ``evaluate`` nor ``datasets`` (slow imports): only
``evaluate.load(mean_iou_metric_path())`` pays for them. It needs torch only when given tensors.
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
]
