"""Confusion-matrix arithmetic behind catseg-hf's mean-IoU metric.

This module is deliberately self-contained (NumPy only; PyTorch is used when, and only when, the
caller hands in `torch.Tensor` objects) because two very different importers share it:

* [`catseg_hf.evaluation.metrics`] (the streaming [`catseg_hf.evaluation.StreamingMeanIoU`]);
* the `evaluate` metric script `mean_iou.py` next to this file, which `evaluate.load` copies,
  together with this file, into its own module cache, where `catseg_hf` is not on the import path
  under this name.

Semantics (those of the Hugging Face hub metric `evaluate-metric/mean_iou`; see
`metrics/mean_iou/mean_iou.py` in `huggingface/evaluate`), for each (prediction, reference) pair:

1. `label_map`: the entries are applied to the reference one after the other, each one to the
   result of the previous ones, so chained entries chain (`{1: 2, 2: 3}` sends 1 to 3). The hub
   does this in place on the caller's array; here the caller's data are never modified.
2. `reduce_labels`: reference 0 becomes 255, then every reference is decreased by 1, then 254
   becomes 255 (so 0 -> 255, 255 -> 255, v -> v - 1 otherwise).
3. Pixels whose (mapped) reference equals `ignore_index` are dropped.
4. Per class `c` in `[0, K)`: `area_intersect[c]` counts pixels with prediction == reference
   == c, `area_pred_label[c]` pixels predicted c, `area_label[c]` pixels labelled c. Ids outside
   `[0, K)` (negative or >= K) fall in no class: the hub bins with
   `np.histogram(x, bins=K, range=(0, K - 1))`, which puts integer v in bin v for 0 <= v <= K - 1
   and drops everything else. A pixel labelled c but predicted out of range still counts in
   `area_label[c]`; a pixel predicted c but labelled out of range (and not ignored) still counts in
   `area_pred_label[c]`.
5. `IoU = intersect / union` with `union = pred + label - intersect`, `accuracy = intersect /
   label`, overall accuracy `= sum(intersect) / sum(label)`; the means are NaN-means; when
   `nan_to_num` is given every NaN in the result is replaced by it.

Extension (not in the hub metric): pixels whose *raw* reference equals `pad_index` (default
-100, the value `transformers.Trainer` pads with when it gathers maps of different sizes across
processes) are dropped before anything else, together with their predictions.

Representation: everything the metric needs is a `(K + 1) x (K + 1)` int64 matrix whose row is the
reference class and whose column is the predicted class, with index `K` standing for "outside
`[0, K)`". Its top-left `K x K` block is the ordinary confusion matrix; the extra row and column
carry exactly the out-of-range counts that step 4 needs. Memory is O(K^2) whatever the number of
images. All arithmetic on ids is done in int64 (the hub works in the input dtype; the two agree
except where the input dtype would overflow, e.g. mapping a uint8 label to 300).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "PAD_INDEX",
    "LabelLookup",
    "compose_label_map",
    "is_torch_tensor",
    "pair_maps",
    "cell_indices",
    "count_cells",
    "confusion_from_maps",
    "areas_from_confusion",
    "metrics_from_areas",
    "metrics_from_confusion",
    "detectron2_metrics_from_confusion",
]

#: Reference value that marks padding (never counted, nor its prediction): `Trainer`'s pad value.
PAD_INDEX = -100

#: A composed `label_map`: (sorted original ids, final ids), both int64 NumPy vectors.
LabelLookup = tuple[np.ndarray, np.ndarray]


def _torch_module():
    # Only look torch up if the caller already imported it: a NumPy-only user never pays for it, and
    # an object can only be a torch.Tensor if torch is already loaded.
    return sys.modules.get("torch")


def is_torch_tensor(obj: Any) -> bool:
    """Return whether `obj` is a `torch.Tensor` (without importing torch)."""
    torch = _torch_module()
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_array(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or is_torch_tensor(obj)


def compose_label_map(label_map: Mapping[Any, Any] | None) -> LabelLookup | None:
    """Fold a `label_map` into a single lookup with the hub's chained (in-order) semantics.

    Applying the entries `old -> new` one after the other to an array sends a pixel of original
    value `v` to `f(v)`, where `f` follows `v` through the entries in order; a value that is
    not a key is never touched. Precomputing `f` on the keys lets us apply the whole map in one
    vectorised lookup instead of one full-array pass per entry (ADE-style maps have hundreds).

    Args:
        label_map (`Mapping[Any, Any] | None`):
            Mapping of integer ids (its iteration order is the application order), or None.

    Returns:
        `(keys, values)` sorted by key, only for keys whose final id differs from the original one,
        or None when the map is empty or changes nothing.
    """
    if not label_map:
        return None
    entries = [(_as_int_id(old, "label_map key"), _as_int_id(new, "label_map value")) for old, new in label_map.items()]
    finals = {}
    for start, _ in entries:
        current = start
        for old, new in entries:
            if current == old:
                current = new
        if current != start:
            finals[start] = current
    if not finals:
        return None
    keys = np.array(sorted(finals), dtype=np.int64)
    values = np.array([finals[k] for k in keys.tolist()], dtype=np.int64)
    return keys, values


def _as_int_id(value: Any, what: str) -> int:
    # Accept Python/NumPy integers and integral floats (e.g. from a JSON config); refuse the rest
    # rather than silently never matching (the hub would compare ints with e.g. strings).
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise TypeError(f"{what} must be an integer id, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Input normalisation
# --------------------------------------------------------------------------------------------------


def _shape_of(obj: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in obj.shape)


def _to_array(obj: Any, what: str, index: int | None) -> Any:
    if _is_array(obj):
        return obj
    try:
        arr = np.asarray(obj)
    except ValueError as exc:  # ragged nested lists
        where = f" at index {index}" if index is not None else ""
        raise ValueError(f"{what}{where} is not a rectangular array: {exc}") from exc
    if arr.dtype == object:
        where = f" at index {index}" if index is not None else ""
        raise ValueError(f"{what}{where} is not a rectangular integer array (got an object array)")
    return arr


def _check_same_shape(pred: Any, ref: Any, index: int | None) -> None:
    if _shape_of(pred) != _shape_of(ref):
        where = f" (pair {index})" if index is not None else ""
        raise ValueError(
            f"predictions and references must have the same shape{where}; got predictions of shape "
            f"{_shape_of(pred)} and references of shape {_shape_of(ref)}"
        )


def pair_maps(predictions: Any, references: Any) -> list[tuple[Any, Any]]:
    """Normalise the accepted input layouts to a list of same-shape (prediction, reference) pairs.

    Accepted: one map each (any shape, e.g. `(H, W)`), a batch each (e.g. `(B, H, W)`: the
    metric is element-wise, so a batch is simply a bigger map), or sequences (list/tuple, or an
    array iterated along its first axis when the other side is a sequence) of maps that may differ
    in size from pair to pair. NumPy arrays, torch tensors and nested lists are accepted.

    Raises:
        ValueError: when the number of maps differs, or a prediction and its reference differ in
            shape (the message names both shapes).
    """
    if _is_array(predictions) and _is_array(references):
        _check_same_shape(predictions, references, None)
        return [(predictions, references)]
    if isinstance(predictions, (str, bytes)) or isinstance(references, (str, bytes)):
        raise TypeError("predictions and references must be arrays, tensors or sequences of maps")
    preds = _as_sequence(predictions, "predictions")
    refs = _as_sequence(references, "references")
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} prediction maps but {len(refs)} reference maps")
    pairs = []
    for i, (pred, ref) in enumerate(zip(preds, refs)):
        pred = _to_array(pred, "prediction", i)
        ref = _to_array(ref, "reference", i)
        _check_same_shape(pred, ref, i)
        pairs.append((pred, ref))
    return pairs


def _as_sequence(obj: Any, what: str) -> Sequence[Any]:
    if _is_array(obj):
        if len(obj.shape) == 0:
            raise ValueError(f"{what} is a 0-d array; expected a map or a sequence of maps")
        return [obj[i] for i in range(obj.shape[0])]
    try:
        return list(obj)
    except TypeError as exc:
        raise TypeError(f"{what} must be an array, a tensor or a sequence of maps, got {type(obj).__name__}") from exc


# --------------------------------------------------------------------------------------------------
# Per-pair cell indices (NumPy and torch back ends)
# --------------------------------------------------------------------------------------------------


def _numpy_int64(arr: Any, what: str) -> np.ndarray:
    if is_torch_tensor(arr):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        # Float maps are accepted only if every value is an integer id: truncating 2.7 to 2 (or
        # histogramming it into bin 2, as the hub would) would silently score garbage.
        if arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"{what} must hold integer class ids; got non-integral floating-point values")
        return arr.astype(np.int64)
    raise TypeError(f"{what} must hold integer class ids, got dtype {arr.dtype}")


def _torch_int64(arr: Any, what: str, device: Any):
    torch = _torch_module()
    if not is_torch_tensor(arr):
        arr = _numpy_int64(arr, what)
        if not arr.flags.writeable:
            # torch warns about wrapping read-only NumPy memory; a private copy avoids that.
            arr = arr.copy()
        return torch.as_tensor(arr, device=device)
    arr = arr.detach()
    if arr.device != device:
        arr = arr.to(device)
    if arr.dtype == torch.bool or not (arr.is_floating_point() or arr.is_complex()):
        return arr.to(torch.int64)
    if arr.is_floating_point():
        if arr.numel() and not (torch.isfinite(arr).all() and (arr == torch.round(arr)).all()):
            raise ValueError(f"{what} must hold integer class ids; got non-integral floating-point values")
        return arr.to(torch.int64)
    raise TypeError(f"{what} must hold integer class ids, got dtype {arr.dtype}")


#: Tests set this to run the torch kernels (the CUDA code path) on CPU tensors too.
_FORCE_TORCH_KERNELS = False


def _host_device(device: Any) -> bool:
    """True for the NumPy back end (None) and for CPU torch devices, both counted with NumPy."""
    if device is None:
        return True
    return getattr(device, "type", device) == "cpu" and not _FORCE_TORCH_KERNELS


def _apply_lookup_numpy(ref: np.ndarray, lookup: LabelLookup) -> np.ndarray:
    keys, values = lookup
    pos = np.minimum(np.searchsorted(keys, ref), keys.size - 1)
    return np.where(keys[pos] == ref, values[pos], ref)


def _apply_lookup_torch(ref, lookup: LabelLookup):
    torch = _torch_module()
    keys = torch.as_tensor(lookup[0], device=ref.device)
    values = torch.as_tensor(lookup[1], device=ref.device)
    pos = torch.searchsorted(keys, ref).clamp_(max=keys.numel() - 1)
    return torch.where(keys[pos] == ref, values[pos], ref)


def cell_indices(
    prediction: Any,
    reference: Any,
    num_labels: int,
    ignore_index: int | None,
    label_lookup: LabelLookup | None = None,
    reduce_labels: bool = False,
    pad_index: int | None = PAD_INDEX,
    device: Any = None,
):
    """Flat indices into the `(K + 1) x (K + 1)` matrix, one per counted pixel of one pair.

    Args:
        prediction (`Any`):
            Predicted class-id map (NumPy-convertible, or a torch tensor).
        reference (`Any`):
            Reference map of the same shape (NumPy-convertible, or a torch tensor).
        num_labels (`int`):
            K.
        ignore_index (`int | None`):
            Reference id (after `label_map`/`reduce_labels`) whose pixels are dropped;
            None drops nothing.
        label_lookup (`LabelLookup`, *optional*):
            The output of [`compose_label_map`], or None.
        reduce_labels (`bool`, *optional*, defaults to `False`):
            Apply the hub's `reduce_labels` to the reference.
        pad_index (`int | None`, *optional*, defaults to `PAD_INDEX`):
            Raw reference id whose pixels are dropped before anything else; None disables.
        device (`Any`, *optional*):
            None for the NumPy back end, or a `torch.device` for the torch back end (inputs
            are moved there). A CPU `torch.device` is computed with NumPy (zero-copy views of CPU
            tensors), which is several times faster than torch's CPU kernels for these ops.

    Returns:
        A 1-D int64 NumPy array (NumPy back end or CPU device) or CUDA/other-device torch tensor
        of `reference * (K + 1) + prediction`, where ids outside `[0, K)` have been replaced
        by K. New memory: the caller's inputs are never written to.
    """
    k = int(num_labels)
    if _host_device(device):
        pred = _numpy_int64(prediction, "predictions").reshape(-1)
        ref = _numpy_int64(reference, "references").reshape(-1)
        keep = ref != pad_index if pad_index is not None else None
        if label_lookup is not None:
            ref = _apply_lookup_numpy(ref, label_lookup)
        return _combined_cells(pred, ref, keep, k, ignore_index, reduce_labels, np.where, always_index=False)

    torch = _torch_module()
    pred = _torch_int64(prediction, "predictions", device).reshape(-1)
    ref = _torch_int64(reference, "references", device).reshape(-1)
    keep = ref != pad_index if pad_index is not None else None
    if label_lookup is not None:
        ref = _apply_lookup_torch(ref.contiguous(), label_lookup)
    return _combined_cells(pred, ref, keep, k, ignore_index, reduce_labels, torch.where, always_index=True)


def _combined_cells(
    pred: Any,
    ref: Any,
    keep: Any,
    k: int,
    ignore_index: int | None,
    reduce_labels: bool,
    where: Any,
    always_index: bool,
) -> Any:
    """`ref * (K + 1) + pred` over the kept pixels, ids outside `[0, K)` replaced by K: the arithmetic both back ends
    share (`where` is `np.where` or `torch.where`).

    `keep` (or None) marks the pixels kept so far (the pad mask); ignored reference pixels are dropped too. NumPy
    skips the copy when every pixel is kept; torch (`always_index`) indexes without asking, since the question
    synchronises on CUDA, as boolean indexing does (still far cheaper than a per-class loop).
    """
    if reduce_labels:
        ref = where(ref == 0, 255, ref) - 1
        ref = where(ref == 254, 255, ref)
    if ignore_index is not None:
        not_ignored = ref != ignore_index
        keep = not_ignored if keep is None else keep & not_ignored
    if keep is not None and (always_index or not keep.all()):
        ref = ref[keep]
        pred = pred[keep]
    ref = where((ref >= 0) & (ref < k), ref, k)
    pred = where((pred >= 0) & (pred < k), pred, k)
    return ref * (k + 1) + pred


def count_cells(indices: Sequence[Any], num_labels: int, device: Any = None):
    """Histogram a list of flat cell indices into a `(K + 1) x (K + 1)` int64 matrix.

    One `bincount` over the concatenation is much cheaper than one per map when there are many
    small maps and K is large (each bincount writes (K + 1)^2 counters).
    """
    size = (int(num_labels) + 1) ** 2
    if _host_device(device):
        flat = np.concatenate(indices) if len(indices) != 1 else indices[0]
        counts = np.bincount(flat, minlength=size) if flat.size else np.zeros(size, dtype=np.int64)
        counts = counts.astype(np.int64, copy=False).reshape(num_labels + 1, num_labels + 1)
        return counts if device is None else _torch_module().from_numpy(counts)
    torch = _torch_module()
    flat = torch.cat(list(indices)) if len(indices) != 1 else indices[0]
    if flat.numel():
        counts = torch.bincount(flat, minlength=size)
    else:
        counts = torch.zeros(size, dtype=torch.int64, device=device)
    return counts.to(torch.int64).reshape(num_labels + 1, num_labels + 1)


def confusion_from_maps(
    predictions: Any,
    references: Any,
    num_labels: int,
    ignore_index: int | None,
    label_map: Mapping[Any, Any] | None = None,
    reduce_labels: bool = False,
    pad_index: int | None = PAD_INDEX,
    device: Any = None,
):
    """The `(K + 1) x (K + 1)` matrix of a whole set of maps (see [`pair_maps`] for layouts)."""
    if int(num_labels) < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
    lookup = compose_label_map(label_map)
    cells = [
        cell_indices(p, r, num_labels, ignore_index, lookup, reduce_labels, pad_index, device)
        for p, r in pair_maps(predictions, references)
    ]
    if not cells:
        if device is None:
            return np.zeros((num_labels + 1, num_labels + 1), dtype=np.int64)
        torch = _torch_module()
        return torch.zeros((num_labels + 1, num_labels + 1), dtype=torch.int64, device=device)
    return count_cells(cells, num_labels, device)


# --------------------------------------------------------------------------------------------------
# From counts to the metric
# --------------------------------------------------------------------------------------------------


def areas_from_confusion(matrix: Any) -> dict[str, np.ndarray]:
    """The hub's four per-class areas (int64 NumPy vectors of length K) from the extended matrix."""
    if is_torch_tensor(matrix):
        matrix = matrix.detach().cpu().numpy()
    matrix = np.asarray(matrix, dtype=np.int64)
    k = matrix.shape[0] - 1
    if matrix.ndim != 2 or matrix.shape != (k + 1, k + 1) or k < 1:
        raise ValueError(f"expected a square (K + 1) x (K + 1) matrix with K >= 1, got shape {matrix.shape}")
    intersect = np.diagonal(matrix)[:k].copy()
    # Row sums include the out-of-range prediction column; column sums the out-of-range label row.
    area_label = matrix[:k, :].sum(axis=1)
    area_pred = matrix[:, :k].sum(axis=0)
    union = area_pred + area_label - intersect
    return {
        "area_intersect": intersect,
        "area_union": union,
        "area_pred_label": area_pred,
        "area_label": area_label,
    }


def metrics_from_areas(
    area_intersect: np.ndarray,
    area_union: np.ndarray,
    area_label: np.ndarray,
    nan_to_num: float | None = None,
) -> dict[str, Any]:
    """The hub metric's result dict from per-class areas (float64 arithmetic, NaN-means)."""
    intersect = np.asarray(area_intersect, dtype=np.float64)
    union = np.asarray(area_union, dtype=np.float64)
    label = np.asarray(area_label, dtype=np.float64)
    # 0/0 (a class absent from both sides, or no counted pixel at all) is NaN, as in the hub;
    # silence NumPy's warnings about it and about NaN-means of all-NaN vectors.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        overall = intersect.sum() / label.sum()
        iou = intersect / union
        acc = intersect / label
        result = {
            "mean_iou": np.nanmean(iou),
            "mean_accuracy": np.nanmean(acc),
            "overall_accuracy": overall,
            "per_category_iou": iou,
            "per_category_accuracy": acc,
        }
    if nan_to_num is not None:
        result = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in result.items()}
    return result


def metrics_from_confusion(matrix: Any, nan_to_num: float | None = None) -> dict[str, Any]:
    """The hub metric's result dict (`mean_iou`, `mean_accuracy`, `overall_accuracy`,
    `per_category_iou`, `per_category_accuracy`) from the extended matrix."""
    areas = areas_from_confusion(matrix)
    return metrics_from_areas(areas["area_intersect"], areas["area_union"], areas["area_label"], nan_to_num)


def detectron2_metrics_from_confusion(matrix: Any) -> dict[str, Any]:
    """Score the extended matrix the way detectron2's `SemSegEvaluator` does.

    This is *not* the hub metric: detectron2 averages IoU and accuracy only over classes with at
    least one (non-ignored) reference pixel, so a class that is predicted somewhere but absent from
    every reference does not pull the mean down (the hub metric counts it as IoU 0). CAT-Seg's
    reported numbers come from detectron2's evaluator. detectron2 cannot represent out-of-range
    reference ids other than its ignore id; here such pixels are left out entirely, and predictions
    outside `[0, K)` count as wrong for the reference class (as in the hub metric).

    Returns:
        `mIoU`, `fwIoU`, `mACC`, `pACC` in percent (float), plus `per_category_iou` and
        `per_category_accuracy` as fractions (NaN for classes without reference pixels).
    """
    if is_torch_tensor(matrix):
        matrix = matrix.detach().cpu().numpy()
    matrix = np.asarray(matrix, dtype=np.int64)
    k = matrix.shape[0] - 1
    tp = np.diagonal(matrix)[:k].astype(np.float64)
    pos_gt = matrix[:k, :].sum(axis=1).astype(np.float64)
    pos_pred = matrix[:k, :k].sum(axis=0).astype(np.float64)
    union = pos_gt + pos_pred - tp
    acc = np.full(k, np.nan)
    iou = np.full(k, np.nan)
    valid = pos_gt > 0
    acc[valid] = tp[valid] / pos_gt[valid]
    iou[valid] = tp[valid] / union[valid]
    total_gt = pos_gt.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        n_valid = valid.sum()
        miou = iou[valid].sum() / n_valid if n_valid else np.nan
        macc = acc[valid].sum() / n_valid if n_valid else np.nan
        fwiou = (iou[valid] * pos_gt[valid] / total_gt).sum() if total_gt else np.nan
        pacc = tp.sum() / total_gt if total_gt else np.nan
    return {
        "mIoU": float(100 * miou),
        "fwIoU": float(100 * fwiou),
        "mACC": float(100 * macc),
        "pACC": float(100 * pacc),
        "per_category_iou": iou,
        "per_category_accuracy": acc,
    }
