"""Load semantic-segmentation datasets from anywhere, lazily, with standard columns.

:func:`load_segmentation_dataset` returns a :class:`datasets.Dataset` (or, with
``streaming=True``, a :class:`datasets.IterableDataset`) whose examples have an ``image`` and
a ``label`` column, both PIL images when accessed. Supported sources:

* a Hugging Face Hub dataset id, e.g. ``"GATE-engine/COCOStuff164K"`` (columns ``image`` /
  ``mask``): loaded with :func:`datasets.load_dataset`;
* local parquet files, a glob, or a directory of parquet files (loaded with the ``parquet``
  builder; Arrow memory-maps the result);
* a directory written by :meth:`datasets.Dataset.save_to_disk` / ``DatasetDict.save_to_disk``;
* an image folder + mask folder pair, paired by file stem (``source=(image_dir, mask_dir)``);
* the folder layouts produced by CAT-Seg's official preparation scripts
  (``layout="coco_stuff"``, ``"ade150"``, ... -- see :data:`OFFICIAL_LAYOUTS`).

Nothing reads pixel data up front: folder pairs become a table of file *paths* cast to
:class:`datasets.Image` (decoded on access), hub/parquet data stays in memory-mapped Arrow
files, and label remapping is applied on access (``with_transform``) or lazily while
streaming (``IterableDataset.map``).

Label conventions
-----------------
The returned labels are class ids with ``ignore_index`` (default 255) for "ignore". Remapping
options, applied in this order on access:

1. ``source_ignore_value -> ignore_index`` (e.g. 65535 -> 255 for 16-bit masks of a
   dataset with fewer than 255 classes);
2. either ``reduce_labels`` (0 -> ignore, every other id -1, ignore stays ignore: the
   transformers/SegFormer convention for datasets whose 0 means "unlabelled") or ``label_map``
   (``{old: new}`` applied simultaneously -- ``{1: 2, 2: 3}`` maps 1 to 2 and 2 to 3, never 1
   to 3; values not in the map are kept). The two are mutually exclusive.

Remapped labels are returned as PIL mode ``"L"`` when every value fits in 8 bits, otherwise as
16-bit (``"I;16"``) or 32-bit (``"I"``) images, so values are never clipped. Datasets with 255
classes or more (ADE-847, PASCAL-Context-459) cannot use 255 as the ignore value; their
official layouts therefore keep their own ignore value (65535 / 459) by default.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "IMAGE_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES",
    "OfficialLayout",
    "OFFICIAL_LAYOUTS",
    "load_segmentation_dataset",
    "load_image_mask_folders",
    "pair_files_by_stem",
    "load_class_names",
    "LabelRemapper",
    "remap_labels",
    "add_transform",
    "coco_stuff_raw_label_map",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff")

# Column names tried (in order) when image_column / label_column are not given.
IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("image", "img", "pixel_values", "jpg", "rgb")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = (
    "label",
    "mask",
    "annotation",
    "semantic_segmentation",
    "segmentation",
    "seg",
    "labels",
    "gt",
    "png",
)

_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "test": "validation", "training": "train"}


@dataclass(frozen=True)
class OfficialLayout:
    """Where one of CAT-Seg's prepared datasets lives under a data root.

    Attributes:
        splits: split name -> ``(image_dir, annotation_dir)``, relative to the data root.
        num_classes: number of classes of the benchmark.
        ignore_index: ignore value stored in the prepared masks.
        class_names_file: name of the official class-name JSON in CAT-Seg's ``datasets/``
            folder (not shipped here; pass its path as ``class_names_file``).
        note: provenance / caveats.
    """

    splits: Mapping[str, tuple[str, str]]
    num_classes: int
    ignore_index: int = 255
    class_names_file: str = ""
    note: str = ""


# Paths as written by CAT-Seg's dataset preparation scripts and read by its dataset
# registration code (``$DETECTRON2_DATASETS/...``). Only COCO-Stuff is used for training; the
# other benchmarks are evaluation-only, so the prepare scripts only produce validation masks.
OFFICIAL_LAYOUTS: dict[str, OfficialLayout] = {
    "coco_stuff": OfficialLayout(
        splits={
            "train": ("coco-stuff/images/train2017", "coco-stuff/annotations_detectron2/train2017"),
            "validation": ("coco-stuff/images/val2017", "coco-stuff/annotations_detectron2/val2017"),
        },
        num_classes=171,
        class_names_file="coco.json",
        note="prepare_coco_stuff.py; 8-bit png, 255 = unlabelled",
    ),
    "ade150": OfficialLayout(
        splits={
            # The official script only converts 'validation'; 'training' follows the same
            # convention if you run the converter on ADE's training annotations.
            "train": ("ADEChallengeData2016/images/training", "ADEChallengeData2016/annotations_detectron2/training"),
            "validation": (
                "ADEChallengeData2016/images/validation",
                "ADEChallengeData2016/annotations_detectron2/validation",
            ),
        },
        num_classes=150,
        class_names_file="ade150.json",
        note="prepare_ade20k_150.py; ids shifted by -1 so 0 (unlabelled) became 255",
    ),
    "ade847": OfficialLayout(
        splits={
            "validation": (
                "ADE20K_2021_17_01/images_detectron2/validation",
                "ADE20K_2021_17_01/annotations_detectron2/validation",
            )
        },
        num_classes=847,
        ignore_index=65535,
        class_names_file="ade847.json",
        note="prepare_ade20k_847.py; 16-bit tif, 65535 = unlabelled",
    ),
    "pc59": OfficialLayout(
        splits={"validation": ("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/annotations_detectron2/pc59_val")},
        num_classes=59,
        class_names_file="pc59.json",
        note="prepare_pascal_context_59.py; JPEGImages holds more images than are annotated",
    ),
    "pc459": OfficialLayout(
        splits={"validation": ("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/annotations_detectron2/pc459_val")},
        num_classes=459,
        ignore_index=459,
        class_names_file="pc459.json",
        note="prepare_pascal_context_459.py; 16-bit tif; the registration declares ignore_label=459",
    ),
    "voc20": OfficialLayout(
        splits={"validation": ("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/annotations_detectron2/val")},
        num_classes=20,
        class_names_file="voc20.json",
        note="prepare_voc.py; background pixels are ignored (255)",
    ),
    "voc20b": OfficialLayout(
        splits={"validation": ("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/annotations_detectron2_bg/val")},
        num_classes=21,
        class_names_file="voc20b.json",
        note="prepare_voc.py; 20 classes + 'background' as class 20",
    ),
}


# --------------------------------------------------------------------------- label remapping


def _build_lut(
    max_value: int,
    *,
    reduce_labels: bool,
    label_map: Mapping[int, int] | None,
    ignore_index: int,
    source_ignore_value: int | None,
) -> np.ndarray:
    lut = np.arange(max_value + 1, dtype=np.int64)
    if source_ignore_value is not None and source_ignore_value <= max_value:
        lut[source_ignore_value] = ignore_index
    if reduce_labels:
        reduced = lut - 1
        reduced[lut == 0] = ignore_index
        reduced[lut == ignore_index] = ignore_index
        lut = reduced
    elif label_map:
        # Look up against the values *before* mapping so that {1: 2, 2: 3} never chains 1 -> 3.
        before = lut.copy()
        for old, new in label_map.items():
            lut[before == int(old)] = int(new)
    return lut


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
        label: integer label map (any shape; uint8/uint16 use a fast lookup table).
        reduce_labels: 0 -> ``ignore_index``, other ids -1 (``ignore_index`` stays).
        label_map: ``{old: new}``, applied simultaneously (no chaining).
        ignore_index: the ignore value of the output.
        source_ignore_value: ignore value used by the files, mapped to ``ignore_index`` first.

    Returns:
        an int64 array of the same shape.
    """
    if reduce_labels and label_map:
        raise ValueError(
            "reduce_labels and label_map are mutually exclusive: fold the -1 shift into label_map instead."
        )
    label = np.asarray(label)
    if label.dtype.kind not in "iub":
        raise TypeError(f"Labels must be integers, got dtype {label.dtype}.")
    if label.size == 0:
        return label.astype(np.int64)
    if label.dtype in (np.uint8, np.uint16, np.bool_):
        max_value = 255 if label.dtype != np.uint16 else 65535
        lut = _build_lut(
            max_value,
            reduce_labels=reduce_labels,
            label_map=label_map,
            ignore_index=ignore_index,
            source_ignore_value=source_ignore_value,
        )
        return lut[label.astype(np.int64) if label.dtype == np.bool_ else label]
    # Wider integer types: remap the distinct values only.
    values, inverse = np.unique(label, return_inverse=True)
    mapped = values.astype(np.int64).copy()
    if source_ignore_value is not None:
        mapped[values == source_ignore_value] = ignore_index
    if reduce_labels:
        out = mapped - 1
        out[mapped == 0] = ignore_index
        out[mapped == ignore_index] = ignore_index
        mapped = out
    elif label_map:
        before = mapped.copy()
        for old, new in label_map.items():
            mapped[before == int(old)] = int(new)
    return mapped[inverse].reshape(label.shape)


def _label_to_pil(label: np.ndarray) -> Image.Image:
    """Smallest lossless PIL representation of a class-id map ("L", "I;16" or "I")."""
    low, high = int(label.min(initial=0)), int(label.max(initial=0))
    if low >= 0 and high <= 255:
        return Image.fromarray(label.astype(np.uint8), mode="L")
    if low >= 0 and high <= 65535:
        return Image.fromarray(label.astype(np.uint16))  # mode "I;16"
    return Image.fromarray(label.astype(np.int32), mode="I")


class LabelRemapper:
    """Picklable batch transform that remaps the ``label`` column (returned as PIL images).

    Used by :func:`load_segmentation_dataset` through ``Dataset.with_transform`` (on access) or
    ``IterableDataset.map`` (while streaming), so no label is decoded up front. Other columns
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
            raise ValueError(
                "reduce_labels and label_map are mutually exclusive: fold the -1 shift into label_map instead."
            )
        self.reduce_labels = reduce_labels
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self.ignore_index = int(ignore_index)
        self.source_ignore_value = None if source_ignore_value is None else int(source_ignore_value)
        self.label_column = label_column

    def remap(self, label: Any) -> Image.Image:
        """Remap one label (PIL or array) and return it as a PIL image."""
        from .transforms import to_label_array

        array = remap_labels(
            to_label_array(label),
            reduce_labels=self.reduce_labels,
            label_map=self.label_map,
            ignore_index=self.ignore_index,
            source_ignore_value=self.source_ignore_value,
        )
        return _label_to_pil(array)

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
    """``second(first(batch))``; picklable so that DataLoader workers can use it."""

    def __init__(self, first: Callable, second: Callable):
        self.first = first
        self.second = second

    def __call__(self, batch):
        return self.second(self.first(batch))

    def __repr__(self) -> str:
        return f"{self.first!r} -> {self.second!r}"


def add_transform(dataset, transform: Callable):
    """Apply a batch transform *after* any transform the dataset already has, lazily.

    ``Dataset.set_transform`` replaces the current transform -- which would silently drop the
    label remapping installed by :func:`load_segmentation_dataset`. Use this instead to stack,
    e.g. ``train_ds = add_transform(train_ds, TrainTransform(seed=0))``.

    Works on :class:`datasets.Dataset` (``with_transform``; returns a new dataset) and
    :class:`datasets.IterableDataset` (``map(batched=True)``).
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
    """``label_map`` from raw COCO-Stuff-164k ``stuffthingmaps`` ids to CAT-Seg's 171 contiguous ids.

    The raw maps store ``COCO category id - 1`` (0..181, 255 = unlabelled) with 11 unused ids;
    the 171 used ids, sorted, become 0..170 (the order of CAT-Seg's ``coco.json``), and the
    unused ids become 255. Use it for COCO-Stuff copies that were not converted by
    ``prepare_coco_stuff.py`` (check the value range of a few masks first).
    """
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    used = [i for i in range(182) if i not in unused]
    mapping = {raw: new for new, raw in enumerate(used)}
    mapping.update({raw: 255 for raw in unused})
    return mapping


# --------------------------------------------------------------------------- folder pairs


def _list_files(directory: Path, extensions: Iterable[str], recursive: bool) -> dict[str, Path]:
    """Map stem -> path of files with one of ``extensions`` (case-insensitive)."""
    extensions = tuple(e.lower() for e in extensions)
    found: dict[str, Path] = {}
    duplicates = []
    if recursive:
        candidates = (p for p in directory.rglob("*") if p.is_file())
    else:
        # os.scandir reports file types from the directory listing itself: no per-file stat,
        # which matters for 118k COCO images. Only names are read, never file contents.
        with os.scandir(directory) as entries:
            candidates = [Path(e.path) for e in entries if e.is_file()]
    for path in sorted(candidates):
        if path.suffix.lower() in extensions:
            stem = str(path.relative_to(directory).with_suffix("")) if recursive else path.stem
            if stem in found:
                duplicates.append(stem)
            found[stem] = path
    if duplicates:
        raise ValueError(
            f"Several files in {directory} share the stem(s) {sorted(set(duplicates))[:10]} (different "
            "extensions), so images and masks cannot be paired unambiguously. Remove the duplicates."
        )
    return found


def pair_files_by_stem(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    *,
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    mask_extensions: Sequence[str] = MASK_EXTENSIONS,
    on_unmatched: str = "error",
    recursive: bool = False,
) -> tuple[list[str], list[str]]:
    """Pair images with masks that have the same file stem; returns absolute paths, sorted.

    Args:
        on_unmatched: ``"error"`` (default) raises, listing the unmatched stems;
            ``"skip_images"`` drops images without a mask (for layouts whose image folder is a
            superset, like VOC's ``JPEGImages``) but still raises for masks without an image;
            ``"skip"`` drops unmatched files on both sides with a warning.
        recursive: pair by path relative to the folders (sub-folders allowed).
    """
    if on_unmatched not in ("error", "skip", "skip_images"):
        raise ValueError(f"on_unmatched must be 'error', 'skip' or 'skip_images', got {on_unmatched!r}.")
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for name, directory in (("image", image_dir), ("mask", mask_dir)):
        if not directory.is_dir():
            raise FileNotFoundError(f"The {name} folder {str(directory)!r} does not exist or is not a directory.")
    images = _list_files(image_dir, image_extensions, recursive)
    masks = _list_files(mask_dir, mask_extensions, recursive)
    if not images:
        raise FileNotFoundError(f"No images with extensions {tuple(image_extensions)} found in {image_dir}.")
    if not masks:
        raise FileNotFoundError(f"No masks with extensions {tuple(mask_extensions)} found in {mask_dir}.")
    images_without_mask = sorted(set(images) - set(masks))
    masks_without_image = sorted(set(masks) - set(images))

    def _show(stems):
        head = ", ".join(stems[:20])
        return head + (f", ... ({len(stems)} in total)" if len(stems) > 20 else "")

    problems = []
    if images_without_mask and on_unmatched == "error":
        problems.append(f"{len(images_without_mask)} image(s) in {image_dir} have no mask: {_show(images_without_mask)}")
    if masks_without_image and on_unmatched in ("error", "skip_images"):
        problems.append(f"{len(masks_without_image)} mask(s) in {mask_dir} have no image: {_show(masks_without_image)}")
    if problems:
        raise ValueError(
            "Images and masks are paired by file stem, and some files have no partner.\n  "
            + "\n  ".join(problems)
            + "\nFix the folders, or pass on_unmatched='skip' to drop unpaired files."
        )
    if on_unmatched == "skip" and (images_without_mask or masks_without_image):
        logger.warning(
            "Skipping %d image(s) without mask and %d mask(s) without image.",
            len(images_without_mask),
            len(masks_without_image),
        )
    stems = sorted(set(images) & set(masks))
    return [str(images[s].resolve()) for s in stems], [str(masks[s].resolve()) for s in stems]


def load_image_mask_folders(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    *,
    on_unmatched: str = "error",
    recursive: bool = False,
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    mask_extensions: Sequence[str] = MASK_EXTENSIONS,
):
    """A :class:`datasets.Dataset` of (image, mask) file paths cast to ``datasets.Image()``.

    Only the paths are stored, so building the dataset reads no pixel data and decoding
    happens when an example is accessed. Masks are decoded as stored (16-bit masks stay 16-bit).
    """
    import datasets

    image_paths, mask_paths = pair_files_by_stem(
        image_dir,
        mask_dir,
        image_extensions=image_extensions,
        mask_extensions=mask_extensions,
        on_unmatched=on_unmatched,
        recursive=recursive,
    )
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    # Image features encode a str as {"path": str, "bytes": None}: nothing is opened here.
    return datasets.Dataset.from_dict({"image": image_paths, "label": mask_paths}, features=features)


# --------------------------------------------------------------------------- the loader


def _canonical_split(split: str) -> str:
    return _SPLIT_ALIASES.get(split, split)


def _is_save_to_disk_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def _parquet_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.parquet"))
    return sorted(glob.glob(str(path), recursive=True))


def _select_split_files(files: list[str], split: str, base: Path) -> list[str]:
    """Pick the parquet files of ``split`` inside directory ``base`` (Hub naming conventions).

    ``train-00000-of-00002.parquet``, ``data/train/...``, ``validation.parquet`` ... are recognised
    from the path *relative to* ``base`` (``test`` counts as validation when there is no test
    split). When no file name mentions any split, all files form the requested split.
    """
    names = {
        "train": ("train", "training"),
        "validation": ("validation", "val", "valid", "dev"),
        "test": ("test", "testing"),
    }

    def split_of(path: str) -> str | None:
        relative = Path(path).relative_to(base)
        parts = relative.parts[:-1] + (relative.stem,)
        tokens = set()
        for part in parts:
            for tok in part.replace("_", "-").replace(".", "-").split("-"):
                tokens.add(tok.lower())
        for canonical, aliases in names.items():
            if tokens & set(aliases):
                return canonical
        return None

    by_split: dict[str | None, list[str]] = {}
    for f in files:
        by_split.setdefault(split_of(f), []).append(f)
    if set(by_split) == {None}:
        return files
    wanted = "test" if split == "test" else _canonical_split(split)
    if wanted in by_split:
        return by_split[wanted]
    if split == "test" and "validation" in by_split:
        return by_split["validation"]
    available = sorted(k for k in by_split if k is not None)
    raise ValueError(f"No parquet files for split {split!r}; the file names indicate the splits {available}.")


def _pick_split(dataset_dict, split: str, source: str):
    if split in dataset_dict:
        return dataset_dict[split]
    canonical = _canonical_split(split)
    for candidate in (canonical, "val" if canonical == "validation" else None, "test" if canonical == "validation" else None):
        if candidate and candidate in dataset_dict:
            return dataset_dict[candidate]
    raise ValueError(f"Split {split!r} not found in {source!r}; available splits: {list(dataset_dict)}.")


def _is_image_feature(feature) -> bool:
    import datasets

    return isinstance(feature, datasets.Image) or (isinstance(feature, dict) and set(feature) >= {"bytes", "path"})


def _resolve_column(
    names: Sequence[str], wanted: str | None, candidates: Sequence[str], kind: str, features=None
) -> str:
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"The {kind} column {wanted!r} does not exist; the dataset has columns {list(names)}.")
        return wanted
    present = [c for c in candidates if c in names]
    if features is not None:
        # Prefer image-typed columns: a dataset may have e.g. a ClassLabel "label" next to the
        # segmentation "mask", and the mask is the one we want.
        for candidate in present:
            if _is_image_feature(features.get(candidate)):
                return candidate
    if present:
        return present[0]
    raise ValueError(
        f"Could not find the {kind} column among {list(names)} (tried {list(candidates)}). "
        f"Pass {kind}_column='<name>' explicitly."
    )


def _column_names(dataset) -> list[str]:
    names = dataset.column_names
    if names is None:  # IterableDataset with unknown features: peek at one example
        names = list(next(iter(dataset)).keys())
    return list(names)


def _standardise_columns(dataset, image_column: str | None, label_column: str | None):
    import datasets

    names = _column_names(dataset)
    features = dataset.features
    image_col = _resolve_column(names, image_column, IMAGE_COLUMN_CANDIDATES, "image", features)
    label_col = _resolve_column(names, label_column, LABEL_COLUMN_CANDIDATES, "label", features)
    if image_col == label_col:
        raise ValueError(f"image_column and label_column are both {image_col!r}; they must differ.")
    # Rename in two steps so that swapping or reusing "image"/"label" names cannot collide.
    renames = {}
    if image_col != "image":
        renames[image_col] = "__catseg_image__"
    if label_col != "label":
        renames[label_col] = "__catseg_label__"
    clashes = [n for n in ("image", "label") if n in names and n not in (image_col, label_col)]
    if clashes:
        # e.g. a classification "label" next to the segmentation "mask": move it out of the way.
        dataset = dataset.rename_columns({n: f"original_{n}" for n in clashes})
        logger.warning("Renamed column(s) %s to %s to make room for the standard names.", clashes,
                       [f"original_{n}" for n in clashes])
    if renames:
        dataset = dataset.rename_columns(renames)
        final = {}
        if "__catseg_image__" in renames.values():
            final["__catseg_image__"] = "image"
        if "__catseg_label__" in renames.values():
            final["__catseg_label__"] = "label"
        dataset = dataset.rename_columns(final)
    # Parquet written without `datasets` metadata stores images as {bytes, path} structs:
    # declare them as Image features so they decode to PIL (a schema change, no data copy).
    features = dataset.features
    if features is not None:
        for column in ("image", "label"):
            feature = features.get(column)
            if isinstance(feature, dict) and set(feature) >= {"bytes", "path"}:
                dataset = dataset.cast_column(column, datasets.Image())
            elif feature is not None and not isinstance(feature, datasets.Image):
                if column == "image":
                    raise ValueError(
                        f"The image column has type {feature!r}, expected images (datasets.Image). "
                        "Pass image_column='<name>' to pick the right column."
                    )
                # Labels stored as nested lists / arrays are accepted; transforms convert them.
    return dataset


def _load_hub_split(repo_id: str, split: str, streaming: bool, load_kwargs: Mapping[str, Any]):
    """``datasets.load_dataset(repo_id, split=...)``, trying the usual names of evaluation splits.

    Hub datasets call their evaluation split "validation", "val" or "test"; asking for any of
    them falls back to the others when the exact name does not exist.
    """
    import datasets

    try:
        return datasets.load_dataset(repo_id, split=split, streaming=streaming, **load_kwargs)
    except ValueError as err:
        if "split" not in str(err).lower() or _canonical_split(split) != "validation":
            raise
        last_error = err
    for alternative in ("validation", "val", "test"):
        if alternative == split:
            continue
        try:
            return datasets.load_dataset(repo_id, split=alternative, streaming=streaming, **load_kwargs)
        except ValueError as err:
            last_error = err
    raise last_error


def load_segmentation_dataset(
    source: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = False,
    *,
    layout: str | None = None,
    image_dir: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    reduce_labels: bool = False,
    label_map: Mapping[int, int] | None = None,
    ignore_index: int | None = None,
    source_ignore_value: int | None = None,
    on_unmatched: str | None = None,
    recursive: bool = False,
    **load_kwargs: Any,
):
    """Load a semantic-segmentation dataset with standard ``image`` / ``label`` columns, lazily.

    Args:
        source: one of

            * a Hub dataset id (``"GATE-engine/COCOStuff164K"``);
            * a parquet file, glob or directory of parquet files;
            * a ``save_to_disk`` directory;
            * a ``(image_dir, mask_dir)`` pair (or use ``image_dir=`` / ``mask_dir=``);
            * with ``layout=``: the data root holding CAT-Seg's prepared datasets (default:
              ``$DETECTRON2_DATASETS`` or ``"datasets"``, as in the official code).
        split: ``"train"``, ``"validation"`` (aliases ``"val"``, ``"test"`` for the official
            evaluation sets), or any split name of the source.
        image_column, label_column: source column names; auto-detected when omitted (see
            :data:`IMAGE_COLUMN_CANDIDATES`, :data:`LABEL_COLUMN_CANDIDATES`), then renamed to
            ``image`` and ``label``.
        streaming: return an :class:`datasets.IterableDataset` (no Arrow cache is written for
            hub/parquet sources).
        layout: a key of :data:`OFFICIAL_LAYOUTS` (``"coco_stuff"``, ``"ade150"``, ``"ade847"``,
            ``"pc59"``, ``"pc459"``, ``"voc20"``, ``"voc20b"``).
        reduce_labels, label_map: label remapping (module docstring); applied on access.
        ignore_index: ignore value of the returned labels. Default: 255, or the layout's own
            ignore value for layouts (65535 for ADE-847, 459 for PASCAL-Context-459).
        source_ignore_value: ignore value stored in the files, remapped to ``ignore_index``
            (e.g. 65535 -> 255). For layouts it defaults to the layout's ignore value.
        on_unmatched: how unpaired folder files are handled (see :func:`pair_files_by_stem`);
            default ``"error"``, and ``"skip_images"`` for layouts (their image folders are
            supersets of the annotated images).
        recursive: search image/mask folders recursively (pairing by relative path).
        **load_kwargs: forwarded to :func:`datasets.load_dataset` (e.g. ``name``,
            ``revision``, ``cache_dir``, ``token``).

    Returns:
        a :class:`datasets.Dataset` (or :class:`datasets.IterableDataset` when streaming) whose
        ``image`` and ``label`` columns decode to PIL images; other source columns are kept.
    """
    import datasets

    split = str(split)
    layout_info: OfficialLayout | None = None
    if layout is not None:
        if layout not in OFFICIAL_LAYOUTS:
            raise ValueError(f"Unknown layout {layout!r}; expected one of {list(OFFICIAL_LAYOUTS)}.")
        layout_info = OFFICIAL_LAYOUTS[layout]
        canonical = _canonical_split(split)
        if canonical not in layout_info.splits:
            raise ValueError(
                f"Layout {layout!r} has no {split!r} split; available: {list(layout_info.splits)} "
                "(CAT-Seg only prepares validation sets for its evaluation benchmarks)."
            )
        root = Path(source if source is not None else os.getenv("DETECTRON2_DATASETS", "datasets"))
        rel_images, rel_masks = layout_info.splits[canonical]
        image_dir, mask_dir = root / rel_images, root / rel_masks
        if not image_dir.is_dir() or not mask_dir.is_dir():
            raise FileNotFoundError(
                f"Layout {layout!r} expects images in {image_dir} and masks in {mask_dir} "
                f"(created by CAT-Seg's {layout_info.note.split(';')[0]}); at least one is missing. "
                "Pass the data root that contains them as `source`."
            )
        if on_unmatched is None:
            on_unmatched = "skip_images"
        if source_ignore_value is None:
            source_ignore_value = layout_info.ignore_index
        if ignore_index is None:
            ignore_index = layout_info.ignore_index
        if layout_info.num_classes > ignore_index and ignore_index != layout_info.ignore_index:
            raise ValueError(
                f"ignore_index={ignore_index} is a valid class id of the {layout_info.num_classes}-class "
                f"{layout!r} dataset. Leave ignore_index unset to keep {layout_info.ignore_index}."
            )
    if ignore_index is None:
        ignore_index = 255
    if on_unmatched is None:
        on_unmatched = "error"
    if reduce_labels and label_map:
        raise ValueError("reduce_labels and label_map are mutually exclusive: fold the -1 shift into label_map instead.")

    if image_dir is not None or mask_dir is not None:
        if image_dir is None or mask_dir is None:
            raise ValueError("Give both image_dir and mask_dir (or neither).")
        if source is not None and layout is None:
            raise ValueError("Give either `source` or image_dir/mask_dir, not both.")
        source = (image_dir, mask_dir)
    if source is None:
        raise ValueError("No data source given: pass a hub id, a local path, (image_dir, mask_dir), or layout=.")

    if isinstance(source, (tuple, list)):
        if len(source) != 2:
            raise ValueError(f"A folder-pair source must be (image_dir, mask_dir), got {len(source)} items.")
        dataset = load_image_mask_folders(source[0], source[1], on_unmatched=on_unmatched, recursive=recursive)
        if streaming:
            dataset = dataset.to_iterable_dataset()
        # The folder dataset already uses the standard column names.
        image_column = label_column = None
    else:
        path = Path(source)
        source_str = str(source)
        is_local = path.exists() or any(ch in source_str for ch in "*?[")
        if is_local and _is_save_to_disk_dir(path):
            loaded = datasets.load_from_disk(str(path))
            dataset = _pick_split(loaded, split, source_str) if isinstance(loaded, datasets.DatasetDict) else loaded
            if streaming:
                dataset = dataset.to_iterable_dataset()
        elif is_local:
            files = _parquet_files(path)
            if not files:
                raise FileNotFoundError(
                    f"No parquet files found at {source_str!r}. Local sources must be parquet files, a directory "
                    "of parquet files, a save_to_disk directory, or an (image_dir, mask_dir) pair."
                )
            if path.is_dir():
                # An explicit file or glob is taken as is; a directory may hold several splits.
                files = _select_split_files(files, split, path)
            dataset = datasets.load_dataset(
                "parquet", data_files={"data": files}, split="data", streaming=streaming, **load_kwargs
            )
        else:
            looks_like_path = (
                source_str.startswith(("/", ".", "~"))
                or source_str.count("/") > 1
                or source_str.endswith((".parquet", ".arrow", ".json"))
            )
            if looks_like_path:
                raise FileNotFoundError(
                    f"{source_str!r} does not exist. Local sources must exist; Hub ids look like 'owner/name'."
                )
            dataset = _load_hub_split(source_str, split, streaming, load_kwargs)

    dataset = _standardise_columns(dataset, image_column, label_column)

    needs_remap = (
        reduce_labels
        or bool(label_map)
        or (source_ignore_value is not None and int(source_ignore_value) != int(ignore_index))
    )
    if needs_remap:
        remapper = LabelRemapper(
            reduce_labels=reduce_labels,
            label_map=label_map,
            ignore_index=ignore_index,
            source_ignore_value=source_ignore_value,
        )
        dataset = add_transform(dataset, remapper)
    return dataset


# --------------------------------------------------------------------------- class names


def _names_from_json(path: str | os.PathLike) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if isinstance(data, dict):
        if "id2label" in data and isinstance(data["id2label"], dict):
            data = data["id2label"]
        try:
            items = sorted((int(k), str(v)) for k, v in data.items())
        except ValueError:
            raise ValueError(
                f"{path}: a JSON object must map class ids to names (e.g. {{\"0\": \"wall\"}}); "
                "a plain JSON list of names also works."
            ) from None
        ids = [i for i, _ in items]
        if ids != list(range(len(ids))):
            raise ValueError(f"{path}: class ids must be 0..N-1 without gaps, got {ids[:10]}...")
        return [name for _, name in items]
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return list(data)
    raise ValueError(f"{path}: expected a JSON list of class names or an {{id: name}} object.")


def _names_from_features(features) -> list[str] | None:
    import datasets

    if features is None:
        return None
    # Container feature types differ across `datasets` versions (Sequence, List, LargeList).
    containers = tuple(
        t for t in (getattr(datasets, n, None) for n in ("Sequence", "List", "LargeList")) if isinstance(t, type)
    )
    # Prefer the label column, then any other ClassLabel.
    ordered = sorted(features.items(), key=lambda kv: kv[0] != "label")
    for _, feature in ordered:
        inner = feature
        while True:
            if isinstance(inner, containers):
                inner = inner.feature
            elif isinstance(inner, list) and len(inner) == 1:
                inner = inner[0]
            else:
                break
        if isinstance(inner, datasets.ClassLabel):
            return list(inner.names)
    return None


def _names_from_info(info) -> list[str] | None:
    """``id2label`` embedded in the dataset description as JSON (some converted datasets do this)."""
    description = getattr(info, "description", None) or ""
    try:
        data = json.loads(description)
    except (TypeError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("id2label"), dict):
        items = sorted((int(k), str(v)) for k, v in data["id2label"].items())
        return [name for _, name in items]
    return None


_CLASS_NAME_FILES = ("id2label.json", "class_names.json", "classes.json", "labels.json")


def load_class_names(source_or_dataset: Any = None, class_names_file: str | os.PathLike | None = None) -> list[str]:
    """Class names (index = class id) of a dataset.

    Looked up, in order:

    1. ``class_names_file``: a JSON list of names (CAT-Seg's ``datasets/*.json``) or an
       ``{id: name}`` / ``{"id2label": {...}}`` object;
    2. a dataset object (``Dataset`` / ``IterableDataset`` / ``DatasetDict``): a ``ClassLabel``
       feature, else an ``id2label`` JSON object stored in ``info.description``;
    3. a local directory: ``id2label.json`` / ``class_names.json`` / ``classes.json`` /
       ``labels.json`` inside it;
    4. a Hub dataset id: the same file names in the dataset repository (needs network or cache).

    Raises:
        ValueError: when no class names can be found (the message says what to pass).
    """
    import datasets

    if class_names_file is not None:
        return _names_from_json(class_names_file)
    if source_or_dataset is None:
        raise ValueError("Pass a dataset, a dataset source, or class_names_file=<path to a JSON list of names>.")

    if isinstance(source_or_dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        source_or_dataset = next(iter(source_or_dataset.values()))
    if isinstance(source_or_dataset, (datasets.Dataset, datasets.IterableDataset)):
        names = _names_from_features(source_or_dataset.features) or _names_from_info(source_or_dataset.info)
        if names:
            return names
        raise ValueError(
            "The dataset has no ClassLabel feature and no id2label in its info. Pass class_names_file=<JSON list "
            "of names> (CAT-Seg ships one per benchmark, e.g. datasets/coco.json)."
        )

    if isinstance(source_or_dataset, (tuple, list)):
        raise ValueError("Image/mask folders carry no class names; pass class_names_file=<JSON list of names>.")
    source = str(source_or_dataset)
    if source in OFFICIAL_LAYOUTS:
        raise ValueError(
            f"Class names of layout {source!r} are not bundled; pass class_names_file= pointing to CAT-Seg's "
            f"datasets/{OFFICIAL_LAYOUTS[source].class_names_file}."
        )
    path = Path(source)
    if path.is_dir():
        for name in _CLASS_NAME_FILES:
            if (path / name).is_file():
                return _names_from_json(path / name)
        if _is_save_to_disk_dir(path):
            return load_class_names(datasets.load_from_disk(str(path)))
        raise ValueError(f"No class-name file ({', '.join(_CLASS_NAME_FILES)}) in {path}; pass class_names_file=.")
    if path.exists():
        if path.suffix == ".json":
            return _names_from_json(path)
        raise ValueError(f"{path} is not a JSON class-name file or a dataset directory.")

    # Hub dataset id: look for a class-name file in the repository, then for ClassLabel features.
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with datasets
        hf_hub_download = None
    if hf_hub_download is not None:
        for name in _CLASS_NAME_FILES:
            try:
                local = hf_hub_download(repo_id=source, filename=name, repo_type="dataset")
            except Exception:  # missing file, offline, private repo: try the next option
                continue
            return _names_from_json(local)
    try:
        builder = datasets.load_dataset_builder(source)
        names = _names_from_features(builder.info.features) or _names_from_info(builder.info)
    except Exception as err:
        raise ValueError(
            f"Could not read class names for {source!r} ({type(err).__name__}: {err}). Pass class_names_file=."
        ) from None
    if names:
        return names
    raise ValueError(f"{source!r} declares no class names; pass class_names_file=<JSON list of names>.")
