"""Load semantic-segmentation datasets from any source, lazily, with standard `image` / `label` columns.

`load_segmentation_dataset` returns a `datasets.Dataset` (or, with `streaming=True`, a `datasets.IterableDataset`)
whose examples have an `image` column (PIL images when accessed) and a `label` column. Supported sources:

- a Hugging Face Hub dataset id, e.g. `"GATE-engine/COCOStuff164K"` (columns `image` / `mask`): loaded with
  `datasets.load_dataset`;
- local parquet files, a glob, or a directory of parquet files (the `parquet` builder; Arrow memory-maps them);
- a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`;
- an image folder + mask folder pair, paired by file stem (`source=(image_dir, mask_dir)`, see `.folders`);
- the folder layouts produced by CAT-Seg's official preparation scripts (`layout="coco_stuff"`, `"ade150"`, ...:
  `OFFICIAL_LAYOUTS`, a view of the benchmark registry `catseg_hf.evaluation.benchmarks`).

Nothing reads pixel data up front: folder pairs become a table of file *paths* cast to `datasets.Image` (decoded on
access), hub/parquet data stays in memory-mapped Arrow files, and label remapping (`.labels`) is applied on access
(`with_transform`) or lazily while streaming (`IterableDataset.map`).

Labels are class ids with `ignore_index` (default 255) for "ignore": decoded PIL images when nothing needs
remapping, else integer arrays in the smallest lossless dtype (uint8, uint16 or int32: values are never clipped).
Datasets with 255 classes or more (ADE-847, PASCAL-Context-459) cannot use 255 as the ignore value; their official
layouts therefore keep their own ignore value (65535 / 459) by default.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..evaluation.benchmarks import OFFICIAL_LAYOUTS, OfficialLayout, load_class_names
from .folders import IMAGE_EXTENSIONS, MASK_EXTENSIONS, load_image_mask_folders, pair_files_by_stem
from .labels import LabelRemapper, add_transform, coco_stuff_raw_label_map, remap_labels

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


def _canonical_split(split: str) -> str:
    return _SPLIT_ALIASES.get(split, split)


def is_save_to_disk_dir(path: Path) -> bool:
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
    """Pick the parquet files of `split` inside directory `base`, with `datasets`' own split inference.

    `train-00000-of-00002.parquet`, `data/train/...`, `validation.parquet` ... are recognised by the patterns
    `datasets.load_dataset` uses for Hub repositories (`datasets.data_files.get_data_patterns`); the usual aliases
    apply (`val`/`test` for `validation` when the exact split is missing). When no file name mentions a split, all
    files form the requested split.
    """
    from datasets.data_files import DEFAULT_PATTERNS_ALL, DataFilesDict, get_data_patterns

    patterns = get_data_patterns(str(base))
    if patterns == DEFAULT_PATTERNS_ALL:
        return files
    by_split = DataFilesDict.from_patterns(patterns, base_path=str(base), allowed_extensions=[".parquet"])
    return list(_pick_split({str(name): found for name, found in by_split.items() if found}, split, str(base)))


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
    """`datasets.load_dataset(repo_id, split=...)`, trying the usual names of evaluation splits.

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
    """Load a semantic-segmentation dataset with standard `image` / `label` columns, lazily.

    Args:
        source (`str | os.PathLike | Sequence[str | os.PathLike]`, *optional*):
            One of

            * a Hub dataset id (`"GATE-engine/COCOStuff164K"`);
            * a parquet file, glob or directory of parquet files;
            * a `save_to_disk` directory;
            * a `(image_dir, mask_dir)` pair (or use `image_dir=` / `mask_dir=`);
            * with `layout=`: the data root holding CAT-Seg's prepared datasets (default:
              `$DETECTRON2_DATASETS` or `"datasets"`, as in the official code).
        split (`str`, *optional*, defaults to `"train"`):
            `"train"`, `"validation"` (aliases `"val"`, `"test"` for the official
            evaluation sets), or any split name of the source.
        image_column (`str`, *optional*):
            Source image column; auto-detected when omitted (see [`IMAGE_COLUMN_CANDIDATES`]), then renamed to
            `image`.
        label_column (`str`, *optional*):
            Source label column; auto-detected when omitted (see [`LABEL_COLUMN_CANDIDATES`]), then renamed to
            `label`.
        streaming (`bool`, *optional*, defaults to `False`):
            Return an [`datasets.IterableDataset`] (no Arrow cache is written for
            hub/parquet sources).
        layout (`str`, *optional*):
            A key of [`OFFICIAL_LAYOUTS`] (`"coco_stuff"`, `"ade150"`, `"ade847"`,
            `"pc59"`, `"pc459"`, `"voc20"`, `"voc20b"`).
        reduce_labels (`bool`, *optional*, defaults to `False`):
            Label remapping (module docstring); applied on access.
        label_map (`Mapping[int, int]`, *optional*):
            Label remapping (module docstring); applied on access.
        ignore_index (`int`, *optional*):
            Ignore value of the returned labels. Default: 255, or the layout's own
            ignore value for layouts (65535 for ADE-847, 459 for PASCAL-Context-459).
        source_ignore_value (`int`, *optional*):
            Ignore value stored in the files, remapped to `ignore_index`
            (e.g. 65535 -> 255). For layouts it defaults to the layout's ignore value.
        on_unmatched (`str`, *optional*):
            How unpaired folder files are handled (see [`pair_files_by_stem`]);
            default `"error"`, and `"skip_images"` for layouts (their image folders are
            supersets of the annotated images).
        recursive (`bool`, *optional*, defaults to `False`):
            Search image/mask folders recursively (pairing by relative path).
        **load_kwargs (`Any`):
            Forwarded to [`datasets.load_dataset`] (e.g. `name`,
            `revision`, `cache_dir`, `token`).

    Returns:
        a [`datasets.Dataset`] (or [`datasets.IterableDataset`] when streaming) whose
        `image` and `label` columns decode to PIL images; other source columns are kept.
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
        if is_local and is_save_to_disk_dir(path):
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
