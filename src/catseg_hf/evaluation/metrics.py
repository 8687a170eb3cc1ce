"""Streaming mean IoU for semantic segmentation, with the hub `mean_iou` metric's semantics.

[`StreamingMeanIoU`] accumulates one `(K + 1) x (K + 1)` int64 matrix (see
`catseg_hf/evaluation/mean_iou/mean_iou_core.py` for the exact semantics and why the extra row and
column exist), so its memory does not grow with the number of images, and it can be summed across
processes before [`StreamingMeanIoU.compute`]. The `evaluate` metric returned by
`evaluate.load(mean_iou_metric_path())` computes through the same core functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .mean_iou.mean_iou_core import (
    PAD_INDEX,
    areas_from_confusion,
    cell_indices,
    compose_label_map,
    count_cells,
    detectron2_metrics_from_confusion,
    is_torch_tensor,
    metrics_from_confusion,
    pair_maps,
)

__all__ = ["StreamingMeanIoU", "mean_iou_metric_path", "PAD_INDEX"]


def mean_iou_metric_path() -> str:
    """Absolute path of the `evaluate` metric script, for `evaluate.load(mean_iou_metric_path())`.

    An absolute path matters: `evaluate.load` resolves a relative name against the current
    directory and then the Hub (which is unreachable with `HF_HUB_OFFLINE=1`).
    """
    return str((Path(__file__).resolve().parent / "mean_iou" / "mean_iou.py"))


class StreamingMeanIoU:
    """Mean IoU accumulated batch by batch in a confusion matrix (hub `mean_iou` semantics).

    Results equal those of the Hugging Face hub metric `evaluate-metric/mean_iou` called on all the
    maps at once with the same `num_labels`, `ignore_index`, `label_map` and `reduce_labels`
    (`label_map` entries chain, as they do there), with one addition: pixels whose raw reference
    equals `pad_index` (-100, `transformers.Trainer`'s padding) are never counted, nor are
    their predictions. The caller's arrays are never modified.

    When the first update receives a `torch.Tensor` the matrix lives on that tensor's device and
    all counting happens there (`torch.bincount`); otherwise it is a NumPy array. Later inputs are
    converted to wherever the matrix lives.

    Args:
        num_labels (`int`):
            Number of classes K. Ids outside `[0, K)` belong to no class.
        ignore_index (`int | None`, *optional*, defaults to `255`):
            Reference id, after `label_map` and `reduce_labels`, whose pixels are
            dropped; None drops none.
        reduce_labels (`bool`, *optional*, defaults to `False`):
            Hub `reduce_labels` on the references (0 -> 255, then -1, then 254 -> 255).
        label_map (`Mapping[int, int]`, *optional*):
            Old id -> new id for references, applied entry after entry in iteration order.
        pad_index (`int | None`, *optional*, defaults to `PAD_INDEX`):
            Raw reference id never counted; None disables this extension.

    Example:
        >>> m = StreamingMeanIoU(num_labels=150, ignore_index=255)
        >>> for pred, label in batches:  # doctest: +SKIP
        ...     m.update(pred, label)
        >>> m.reduce_across_processes()  # doctest: +SKIP
        >>> m.compute()["mean_iou"]  # doctest: +SKIP
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int | None = 255,
        reduce_labels: bool = False,
        label_map: Mapping[int, int] | None = None,
        pad_index: int | None = PAD_INDEX,
    ) -> None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
        self.num_labels = int(num_labels)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.reduce_labels = bool(reduce_labels)
        # Keep a private copy: the caller may keep mutating their dict.
        self.label_map = dict(label_map) if label_map else None
        self.pad_index = None if pad_index is None else int(pad_index)
        self._label_lookup = compose_label_map(self.label_map)
        self._matrix = None  # NumPy array or torch tensor, created by the first update

    # ------------------------------------------------------------------ accumulation

    def update(self, predictions: Any, references: Any) -> StreamingMeanIoU:
        """Add maps to the running counts.

        Args:
            predictions (`Any`):
                One map (e.g. `(H, W)`), a batch (e.g. `(B, H, W)`), or a sequence of
                maps that may differ in size; NumPy arrays, torch tensors or nested lists, integer
                ids (integral floats are accepted).
            references (`Any`):
                The matching ground truth, in any of the same layouts, each map the same
                shape as its prediction.

        Returns:
            `self`, so calls can be chained.

        Raises:
            ValueError: on mismatched shapes or numbers of maps (the message gives the shapes).
        """
        pairs = pair_maps(predictions, references)
        if not pairs:
            return self
        # The first update decides where the matrix lives; it is only created once the counting
        # has succeeded, so a rejected update leaves no trace.
        device = self.device if self._matrix is not None else self._device_for(pairs[0])
        cells = [
            cell_indices(
                pred,
                ref,
                self.num_labels,
                self.ignore_index,
                self._label_lookup,
                self.reduce_labels,
                self.pad_index,
                device,
            )
            for pred, ref in pairs
        ]
        counts = count_cells(cells, self.num_labels, device)  # always freshly allocated
        if self._matrix is None:
            self._matrix = counts
        else:
            self._matrix += counts
        return self

    def compute(self, nan_to_num: float | None = None) -> dict[str, Any]:
        """The hub metric's result for everything added so far.

        Returns:
            `{"mean_iou", "mean_accuracy", "overall_accuracy"}` as NumPy float64 scalars and
            `{"per_category_iou", "per_category_accuracy"}` as float64 arrays of length K; NaN for
            classes absent from both predictions and references (or everywhere if nothing was
            counted), unless `nan_to_num` is given, in which case every NaN is replaced by it.
        """
        return metrics_from_confusion(self.extended_confusion_matrix_numpy(), nan_to_num=nan_to_num)

    def compute_detectron2(self) -> dict[str, Any]:
        """The same counts scored the way detectron2's `SemSegEvaluator` does (CAT-Seg's paper
        numbers come from it), which differs from the hub metric in which classes are averaged.

        See [`catseg_hf.evaluation.mean_iou.mean_iou_core.detectron2_metrics_from_confusion`].
        """
        return detectron2_metrics_from_confusion(self.extended_confusion_matrix_numpy())

    def reset(self) -> StreamingMeanIoU:
        """Zero the counts (the matrix keeps its device)."""
        if is_torch_tensor(self._matrix):
            self._matrix.zero_()
        elif self._matrix is not None:
            self._matrix.fill(0)
        return self

    def merge(self, other: StreamingMeanIoU) -> StreamingMeanIoU:
        """Add another accumulator's counts into this one (e.g. from another worker).

        Raises:
            ValueError: if `other` counts a different number of classes.
        """
        if not isinstance(other, StreamingMeanIoU):
            raise TypeError(f"can only merge another StreamingMeanIoU, got {type(other).__name__}")
        if other.num_labels != self.num_labels:
            raise ValueError(f"cannot merge a {other.num_labels}-class metric into a {self.num_labels}-class one")
        if other._matrix is None:
            return self
        if self._matrix is None:
            self._matrix = self._zeros(other.device)
        self._matrix += self._on_my_side(other._matrix)
        return self

    def reduce_across_processes(self) -> StreamingMeanIoU:
        """Sum the counts over all processes with `accelerate.utils.reduce` (a no-op in a single process).

        Every process must call it, once, before [`~StreamingMeanIoU.compute`]; afterwards each process holds the
        global counts. The processes are those of `accelerate.PartialState` (`accelerate launch`, `torchrun`).
        """
        torch = _import_torch()
        if torch is None:
            return self
        from accelerate import PartialState
        from accelerate.utils import reduce

        state = PartialState()
        if state.num_processes == 1:
            return self
        if self._matrix is None:
            # A process that saw no data still has to take part in the collective.
            self._matrix = self._zeros(None)
        local = self._matrix
        tensor = torch.from_numpy(local.copy()) if not is_torch_tensor(local) else local
        if state.backend == "nccl":
            tensor = tensor.to(state.device)  # NCCL reduces CUDA tensors only
        summed = reduce(tensor, reduction="sum")
        if is_torch_tensor(local):
            local.copy_(summed.to(local.device))
        else:
            self._matrix = summed.cpu().numpy()
        return self

    # ------------------------------------------------------------------ views of the counts

    @property
    def device(self) -> Any:
        """`torch.device` of the matrix, or None while it is a NumPy array (or not created yet)."""
        return self._matrix.device if is_torch_tensor(self._matrix) else None

    @property
    def extended_confusion_matrix(self) -> Any:
        """The `(K + 1) x (K + 1)` int64 counts (rows: reference, columns: prediction; index K:
        ids outside `[0, K)`), as stored (NumPy array or torch tensor). Zeros before any update."""
        if self._matrix is None:
            return np.zeros((self.num_labels + 1, self.num_labels + 1), dtype=np.int64)
        return self._matrix

    def extended_confusion_matrix_numpy(self) -> np.ndarray:
        """[`extended_confusion_matrix`] as a NumPy array on the host."""
        matrix = self.extended_confusion_matrix
        return matrix.detach().cpu().numpy() if is_torch_tensor(matrix) else matrix

    @property
    def confusion_matrix(self) -> Any:
        """The `K x K` int64 confusion matrix (rows: reference class, columns: predicted class),
        as stored (NumPy array or torch tensor; a view of the internal counts, do not modify)."""
        return self.extended_confusion_matrix[: self.num_labels, : self.num_labels]

    def areas(self) -> dict[str, np.ndarray]:
        """Per-class `area_intersect`, `area_union`, `area_pred_label`, `area_label`
        (int64 NumPy vectors), exactly the hub's `total_*` areas."""
        return areas_from_confusion(self.extended_confusion_matrix_numpy())

    @property
    def num_counted_pixels(self) -> int:
        """Number of (non-padding, non-ignored) pixels counted so far."""
        return int(self.extended_confusion_matrix_numpy().sum())

    def __repr__(self) -> str:
        where = "numpy" if self.device is None else str(self.device)
        return (
            f"{type(self).__name__}(num_labels={self.num_labels}, ignore_index={self.ignore_index}, "
            f"reduce_labels={self.reduce_labels}, label_map={'set' if self.label_map else None}, "
            f"pad_index={self.pad_index}, matrix={where}, counted_pixels={self.num_counted_pixels})"
        )

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _device_for(pair: Any) -> Any:
        pred, ref = pair
        if is_torch_tensor(pred):
            return pred.device
        if is_torch_tensor(ref):
            return ref.device
        return None

    def _zeros(self, device: Any) -> Any:
        size = (self.num_labels + 1, self.num_labels + 1)
        if device is None:
            return np.zeros(size, dtype=np.int64)
        torch = _import_torch()
        return torch.zeros(size, dtype=torch.int64, device=device)

    def _on_my_side(self, matrix: Any) -> Any:
        if is_torch_tensor(self._matrix):
            torch = _import_torch()
            if not is_torch_tensor(matrix):
                return torch.from_numpy(np.ascontiguousarray(matrix)).to(self._matrix.device)
            return matrix.to(self._matrix.device)
        return matrix.detach().cpu().numpy() if is_torch_tensor(matrix) else matrix


def _import_torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of catseg-hf
        return None
    return torch
