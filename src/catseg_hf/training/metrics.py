"""Mean IoU inside `transformers.Trainer` evaluation with flat memory.

`Trainer` would otherwise keep every batch's logits (classes x pixels, float) until the end of evaluation. With
`TrainingArguments(batch_eval_metrics=True)`:

- [`logits_to_label_maps`] (usable as `preprocess_logits_for_metrics`) turns each batch's logits into int64 label
  maps at the label resolution, so only one batch of logits exists at a time;
- [`SegmentationMetrics`] (the `compute_metrics` callable) adds each batch to a
  [`~catseg_hf.evaluation.StreamingMeanIoU`] confusion matrix and returns the metrics after the last batch.

Across processes `Trainer` pads predictions and labels with -100 and gathers them to every process before calling
`compute_metrics`; `StreamingMeanIoU` never counts pixels whose reference is -100, and since every process receives
all batches, no further reduction across processes is needed.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..evaluation import StreamingMeanIoU
from ..image_processing_catseg import CATSegImageProcessor

__all__ = ["SegmentationMetrics", "logits_to_label_maps", "preprocess_logits_for_metrics"]


def logits_to_label_maps(logits: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel class ids at the label resolution, by the image processor's whole-mode post-processing.

    The same maths as [`~catseg_hf.CATSegImageProcessor.post_process_semantic_segmentation`] (it is called):
    sigmoid, bilinear resize (`align_corners=False`) of the probabilities to the label size, arg-max over classes.
    (The arg-max of resized probabilities can differ from that of resized logits, so training metrics use the
    post-processing the released numbers use.)

    Args:
        logits (`Any`):
            `(B, T, h, w)` CAT-Seg logits (or a tuple/list whose first entry they are, as `Trainer` passes the
            model outputs). Integer `(B, H, W)` label maps are returned unchanged, so applying this twice is harmless.
        labels (`torch.Tensor`, *optional*):
            `(B, H, W)` labels, whose size the maps are made at. Without labels the maps stay at the logits'
            resolution.

    Returns:
        `torch.LongTensor` of shape `(B, H, W)`.
    """
    if isinstance(logits, (tuple, list)):
        if not logits:
            raise ValueError("Got empty model outputs; the model must return `logits`.")
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}.")
    if not logits.is_floating_point():
        if logits.dim() != 3:
            raise ValueError(f"Integer inputs must be (batch, height, width) label maps, got {tuple(logits.shape)}.")
        return logits.long()
    if logits.dim() != 4:
        raise ValueError(f"logits must be (batch, classes, height, width), got shape {tuple(logits.shape)}.")
    size = tuple(labels.shape[-2:]) if labels is not None else tuple(logits.shape[-2:])
    maps = _POST_PROCESSOR.post_process_semantic_segmentation(logits, target_sizes=[size] * logits.shape[0])
    return torch.stack(maps).long()


# Whole-mode post-processing needs no settings of the processor (4-D logits are whole mode).
_POST_PROCESSOR = CATSegImageProcessor()


# The name `Trainer` uses for this hook.
preprocess_logits_for_metrics = logits_to_label_maps


class SegmentationMetrics:
    """`compute_metrics` for `Trainer(..., args=TrainingArguments(batch_eval_metrics=True))`: streaming mean IoU.

    Each call adds one batch of predicted label maps (from [`logits_to_label_maps`]) and references to a
    confusion matrix; the call with `compute_result=True` (the last batch) returns the metrics and resets the
    matrix for the next evaluation. Works without `batch_eval_metrics` too (one call with everything).

    Args:
        num_labels (`int`):
            Number of classes K.
        ignore_index (`int | None`, *optional*, defaults to `255`):
            Reference id that is not scored (255 for COCO-Stuff and the synthetic data).
        class_names (`Sequence[str]`, *optional*):
            Optional names; with `per_category=True` the per-class IoUs are reported as `iou_<name>`.
        per_category (`bool`, *optional*, defaults to `False`):
            Also report per-class IoU and accuracy (K values each).

    Returns (from the final call):
        `{"mean_iou", "mean_accuracy", "overall_accuracy"}` (floats; NaN classes are skipped in the means, as in
        the hub `mean_iou` metric), plus per-class entries with `per_category=True`.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int | None = 255,
        class_names: Sequence[str] | None = None,
        per_category: bool = False,
    ):
        if class_names is not None and len(class_names) != num_labels:
            raise ValueError(f"Got {len(class_names)} class names for num_labels={num_labels}.")
        self.num_labels = int(num_labels)
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.per_category = per_category
        self.metric = StreamingMeanIoU(num_labels=self.num_labels, ignore_index=ignore_index)

    def update(self, predictions: Any, references: Any) -> None:
        """Adds one batch of label maps (tensors or arrays; `predictions` may also be logits)."""
        if isinstance(predictions, torch.Tensor) and predictions.is_floating_point():
            references_tensor = references if isinstance(references, torch.Tensor) else torch.as_tensor(references)
            predictions = logits_to_label_maps(predictions, references_tensor)
        self.metric.update(predictions, references)

    def compute(self) -> dict[str, float]:
        """The metrics of everything added since the last reset, then resets."""
        result = self.metric.compute()
        metrics = {
            "mean_iou": float(result["mean_iou"]),
            "mean_accuracy": float(result["mean_accuracy"]),
            "overall_accuracy": float(result["overall_accuracy"]),
        }
        if self.per_category:
            names = self.class_names or [str(i) for i in range(self.num_labels)]
            for name, iou, accuracy in zip(names, result["per_category_iou"], result["per_category_accuracy"]):
                key = name.replace(" ", "_")
                metrics[f"iou_{key}"] = float(iou)
                metrics[f"accuracy_{key}"] = float(accuracy)
        self.reset()
        return metrics

    def reset(self) -> None:
        """Forgets the counts (a new matrix is created by the next update)."""
        self.metric = StreamingMeanIoU(num_labels=self.num_labels, ignore_index=self.ignore_index)

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float] | None:
        predictions = eval_pred.predictions
        references = eval_pred.label_ids
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        if isinstance(predictions, np.ndarray) and predictions.dtype.kind == "f":
            predictions = torch.from_numpy(predictions)
        self.update(predictions, references)
        return self.compute() if compute_result else None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_labels={self.num_labels}, ignore_index={self.ignore_index}, "
            f"per_category={self.per_category})"
        )
