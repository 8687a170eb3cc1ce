"""catseg-hf mean IoU as an `evaluate` metric (load it with `evaluate.load(<absolute path>)`).

Same numbers as the Hugging Face hub metric `evaluate-metric/mean_iou` (same arguments, same
result dict), computed through one int64 confusion matrix instead of per-image histograms. Use
`catseg_hf.evaluation.mean_iou_metric_path()` for the absolute path: `evaluate.load` resolves a
bare or relative name against the current directory and the Hub first.

Differences from the hub metric, all deliberate:

* inputs are stored as nested int64 sequences rather than PNG-encoded images, so negative ids
  (`-100` padding) and ids above 255 (16-bit benchmarks such as A-847) survive the round trip;
* the caller's arrays are never modified (the hub applies `label_map` in place on them);
* pixels whose raw reference is `pad_index` (default -100) are not counted at all.

For large evaluations prefer the streaming `catseg_hf.evaluation.StreamingMeanIoU`: `evaluate`
caches every added map until `compute`, whereas the streaming class keeps only the matrix.
"""

from __future__ import annotations

import datasets
import evaluate

# Local import: `evaluate.load` copies this sibling file next to the script in its module cache.
# Only import plain functions here: `evaluate` takes the first EvaluationModule subclass it finds
# in this module's namespace as "the" metric, so importing e.g. `evaluate.Metric` by name would
# make it pick the base class.
from .mean_iou_core import PAD_INDEX, confusion_from_maps, metrics_from_confusion

_DESCRIPTION = """\
Mean Intersection-over-Union for semantic segmentation: per class, the number of pixels both
predicted and labelled as the class divided by the number of pixels predicted or labelled as it;
then the NaN-mean over classes. Also returns per-class and mean accuracy (recall) and the overall
pixel accuracy. Semantics follow the hub metric `mean_iou` (mmsegmentation's definition).
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list[ndarray]`):
        Predicted class-id maps, each 2-D; sizes may differ between maps.
    references (`list[ndarray]`):
        Ground-truth maps, each the same size as its prediction.
    num_labels (`int`):
        Number of classes K; ids outside [0, K) belong to no class.
    ignore_index (`int`):
        Reference id (after `label_map` and `reduce_labels`) whose pixels are dropped.
    nan_to_num (`float`, *optional*):
        Replace every NaN in the result by this value.
    label_map (`dict`, *optional*):
        Old id -> new id for references, applied entry after entry (chained entries chain, as in the hub metric).
    reduce_labels (`bool`, *optional*, defaults to `False`):
        Reference 0 -> 255, then every id - 1, then 254 -> 255.
    pad_index (`int`, *optional*, defaults to `-100`):
        Raw reference id whose pixels (and their predictions) are never counted; `None` disables this catseg-hf
        extension.

Returns:
    mean_iou (`float`), mean_accuracy (`float`), overall_accuracy (`float`),
    per_category_iou (`ndarray` of shape (K,)), per_category_accuracy (`ndarray` of shape (K,)).

Examples:
    >>> import numpy as np, evaluate
    >>> from catseg_hf.evaluation import mean_iou_metric_path
    >>> metric = evaluate.load(mean_iou_metric_path())
    >>> metric.add_batch(predictions=[np.array([[0, 1], [1, 1]])], references=[np.array([[0, 1], [255, 0]])])
    >>> round(float(metric.compute(num_labels=2, ignore_index=255)["mean_iou"]), 4)
    0.5
"""

_CITATION = """\
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
  author = {{MMSegmentation Contributors}},
  license = {Apache-2.0},
  title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
  url = {https://github.com/open-mmlab/mmsegmentation},
  year = {2020}
}
"""


class CatSegMeanIoU(evaluate.Metric):
    """`evaluate` front end of catseg-hf's confusion-matrix mean IoU (see the module docstring)."""

    def _info(self):
        # Nested int64 sequences (height, then width): unlike PNG images they keep negative and
        # >255 ids exactly, and they accept maps of different sizes within one batch.
        map_feature = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # (No `format="numpy"`: evaluate allows it only for flat `Value` features, so
            # _compute receives nested lists and converts each map once.)
            features=datasets.Features({"predictions": map_feature, "references": map_feature}),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/mean_iou"],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int | None,
        nan_to_num: float | None = None,
        label_map: dict[int, int] | None = None,
        reduce_labels: bool = False,
        pad_index: int | None = PAD_INDEX,
    ):
        matrix = confusion_from_maps(
            list(predictions),
            list(references),
            num_labels=num_labels,
            ignore_index=ignore_index,
            label_map=label_map,
            reduce_labels=reduce_labels,
            pad_index=pad_index,
        )
        return metrics_from_confusion(matrix, nan_to_num=nan_to_num)
