"""Label remapping on access: `remap_labels`, the `LabelRemapper` transform, `add_transform`, the COCO-Stuff raw map.

Rules, applied in this order:

1. `source_ignore_value -> ignore_index` (e.g. 65535 -> 255 for 16-bit masks of a dataset with fewer than 255
   classes);
2. either `reduce_labels` (0 -> ignore, every other id -1, ignore stays ignore: the transformers/SegFormer
   convention for datasets whose 0 means "unlabelled") or `label_map` (`{old: new}`). The two are mutually
   exclusive.

`label_map` has the meaning of the hub `mean_iou` metric (and of `StreamingMeanIoU`): its entries are applied one
after the other in iteration order, so they chain (`{1: 2, 2: 3}` sends 1 to 3). Both use the same
`compose_label_map`, which folds the chain into one lookup; values that are not keys are kept.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..evaluation.mean_iou.mean_iou_core import compose_label_map

__all__ = ["LabelRemapper", "remap_labels", "add_transform", "coco_stuff_raw_label_map"]

_EXCLUSIVE = "reduce_labels and label_map are mutually exclusive: fold the -1 shift into label_map instead."


def _remap_values(
    values: np.ndarray,
    *,
    reduce_labels: bool,
    label_map: Mapping[int, int] | None,
    ignore_index: int,
    source_ignore_value: int | None,
) -> np.ndarray:
    """The new id of each value in `values` (int64): a lookup table or the distinct values of a label."""
    mapped = values.astype(np.int64).copy()
    if source_ignore_value is not None:
        mapped[values == source_ignore_value] = ignore_index
    if reduce_labels:
        out = mapped - 1
        out[mapped == 0] = ignore_index
        out[mapped == ignore_index] = ignore_index
        mapped = out
    else:
        lookup = compose_label_map(label_map)
        if lookup is not None:
            # The chain is already folded into (key -> final id), so one simultaneous pass is the chained result.
            keys, finals = (np.asarray(part, dtype=np.int64) for part in lookup)
            before = mapped.copy()
            position = np.searchsorted(keys, before)
            hit = (position < len(keys)) & (keys[np.minimum(position, len(keys) - 1)] == before)
            mapped[hit] = finals[position[hit]]
    return mapped


def remap_labels(
    label: np.ndarray,
    *,
    reduce_labels: bool = False,
    label_map: Mapping[int, int] | None = None,
    ignore_index: int = 255,
    source_ignore_value: int | None = None,
) -> np.ndarray:
    """Remap the class ids of a label array (see the module docstring for the rules).

    Args:
        label (`np.ndarray`):
            Integer label map (any shape; uint8/uint16 use a lookup table over all their values).
        reduce_labels (`bool`, *optional*, defaults to `False`):
            0 -> `ignore_index`, other ids -1 (`ignore_index` stays).
        label_map (`Mapping[int, int]`, *optional*):
            `{old: new}`, entries applied in order (they chain, as in the hub `mean_iou` metric).
        ignore_index (`int`, *optional*, defaults to `255`):
            The ignore value of the output.
        source_ignore_value (`int`, *optional*):
            Ignore value used by the files, mapped to `ignore_index` first.

    Returns:
        an int64 array of the same shape.
    """
    if reduce_labels and label_map:
        raise ValueError(_EXCLUSIVE)
    label = np.asarray(label)
    if label.dtype.kind not in "iub":
        raise TypeError(f"Labels must be integers, got dtype {label.dtype}.")
    if label.size == 0:
        return label.astype(np.int64)
    options = dict(
        reduce_labels=reduce_labels, label_map=label_map, ignore_index=ignore_index,
        source_ignore_value=source_ignore_value,
    )
    if label.dtype in (np.uint8, np.uint16, np.bool_):
        # A table over every representable value: one gather, whatever the image size.
        lut = _remap_values(np.arange(65536 if label.dtype == np.uint16 else 256), **options)
        return lut[label.astype(np.int64) if label.dtype == np.bool_ else label]
    # Wider integer types: remap the distinct values only.
    values, inverse = np.unique(label, return_inverse=True)
    return _remap_values(values, **options)[inverse].reshape(label.shape)


def _smallest_dtype(label: np.ndarray) -> np.ndarray:
    """The same class ids in uint8, uint16 or int32, whichever holds them (never clipped)."""
    low, high = int(label.min(initial=0)), int(label.max(initial=0))
    if low >= 0 and high <= 255:
        return label.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return label.astype(np.uint16)
    return label.astype(np.int32)


class LabelRemapper:
    """Picklable batch transform that remaps the `label` column (returned as integer arrays).

    Used by [`load_segmentation_dataset`] through `Dataset.with_transform` (on access) or
    `IterableDataset.map` (while streaming), so no label is decoded up front. Other columns
    pass through unchanged.
    """

    def __init__(
        self,
        *,
        reduce_labels: bool = False,
        label_map: Mapping[int, int] | None = None,
        ignore_index: int = 255,
        source_ignore_value: int | None = None,
        label_column: str = "label",
    ):
        if reduce_labels and label_map:
            raise ValueError(_EXCLUSIVE)
        self.reduce_labels = reduce_labels
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self.ignore_index = int(ignore_index)
        self.source_ignore_value = None if source_ignore_value is None else int(source_ignore_value)
        self.label_column = label_column

    def remap(self, label: Any) -> np.ndarray:
        """Remap one label (PIL or array) and return it as an integer array in the smallest lossless dtype."""
        from .transforms import to_label_array

        array = remap_labels(
            to_label_array(label),
            reduce_labels=self.reduce_labels,
            label_map=self.label_map,
            ignore_index=self.ignore_index,
            source_ignore_value=self.source_ignore_value,
        )
        return _smallest_dtype(array)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        if self.label_column in out:
            out[self.label_column] = [None if lab is None else self.remap(lab) for lab in out[self.label_column]]
        return out

    def __repr__(self) -> str:
        return (
            f"LabelRemapper(reduce_labels={self.reduce_labels}, label_map={self.label_map}, "
            f"ignore_index={self.ignore_index}, source_ignore_value={self.source_ignore_value})"
        )


class _ChainedTransform:
    """`second(first(batch))`; picklable so that DataLoader workers can use it."""

    def __init__(self, first: Callable, second: Callable):
        self.first = first
        self.second = second

    def __call__(self, batch):
        return self.second(self.first(batch))

    def __repr__(self) -> str:
        return f"{self.first!r} -> {self.second!r}"


def add_transform(dataset, transform: Callable):
    """Apply a batch transform *after* any transform the dataset already has, lazily.

    `Dataset.set_transform` replaces the current transform -- which would silently drop the
    label remapping installed by [`load_segmentation_dataset`]. Use this instead to stack,
    e.g. `train_ds = add_transform(train_ds, TrainTransform(seed=0))`.

    Works on [`datasets.Dataset`] (`with_transform`; returns a new dataset) and
    [`datasets.IterableDataset`] (`map(batched=True)`).
    """
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(transform, batched=True)
    if isinstance(dataset, datasets.Dataset):
        fmt = dataset.format
        if fmt.get("type") == "custom" and fmt.get("format_kwargs", {}).get("transform") is not None:
            return dataset.with_transform(
                _ChainedTransform(fmt["format_kwargs"]["transform"], transform),
                columns=fmt.get("columns"),
                output_all_columns=fmt.get("output_all_columns", False),
            )
        return dataset.with_transform(transform)
    raise TypeError(f"Expected a datasets.Dataset or datasets.IterableDataset, got {type(dataset).__name__}.")


def coco_stuff_raw_label_map() -> dict[int, int]:
    """`label_map` from raw COCO-Stuff-164k `stuffthingmaps` ids to CAT-Seg's 171 contiguous ids.

    The raw maps store `COCO category id - 1` (0..181, 255 = unlabelled) with 11 unused ids;
    the 171 used ids, sorted, become 0..170 (the order of CAT-Seg's `coco.json`), and the
    unused ids become 255. Use it for COCO-Stuff copies that were not converted by
    `prepare_coco_stuff.py` (check the value range of a few masks first).
    """
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    used = [i for i in range(182) if i not in unused]
    # Unused ids first: entries chain, and a contiguous id (e.g. 11, from raw 12) must not be sent on to 255
    # by a later `11: 255`. New ids never exceed their raw id, so the ascending used entries cannot chain.
    mapping = {raw: 255 for raw in sorted(unused)}
    mapping.update({raw: new for new, raw in enumerate(used)})
    return mapping
