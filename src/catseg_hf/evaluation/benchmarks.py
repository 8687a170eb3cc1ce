"""The one registry of benchmark and dataset facts, used by training and evaluation alike.

It covers the benchmarks CAT-Seg reports (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b) plus COCO-Stuff (its
training set, and that set's validation split). Each [`Benchmark`] is immutable data: names and aliases, class count,
ignore id, label bit depth, class-name file, the folder layout the official preparation scripts produce (training
split included where CAT-Seg trains), the metric settings and the official mIoU. `OFFICIAL_LAYOUTS` (the folder
layouts of `load_segmentation_dataset(layout=...)`) is a view derived from it, and [`load_class_names`] is the
project's one class-name lookup: benchmark names are answered from the lists shipped as package data
(`class_names/`), anything else (dataset objects, folders, JSON files, Hub ids) by
`catseg_hf.data.dataset_class_names`. Nothing here reads images.

Provenance (checked against the official CAT-Seg repository, github.com/cvlab-kaist/CAT-Seg,
`datasets/README.md`, `datasets/prepare_*.py`, `cat_seg/data/datasets/register_*.py`,
`train_net.py` and `eval.sh`):

* folder layouts, annotation extensions, ignore ids and detectron2 dataset names are those of the
  `register_*.py` files. The A-847 preparation script (`prepare_ade20k_847.py`) was not
  available to check, so how `ADE20K_2021_17_01/images_detectron2` and
  `annotations_detectron2` are produced is unverified; their paths are the registered ones.
* PAS-20 and PAS-20b images are read from `VOCdevkit/VOC2012/JPEGImages` (the registered image
  root; `prepare_voc.py` has its `images_detectron2` copy commented out), Pascal Context images
  from `VOCdevkit/VOC2010/JPEGImages`. detectron2 pairs an image with each annotation file, so
  only annotated (validation) images are evaluated.
* PC-459 annotations are 16-bit TIFFs of `LabelMap - 1` from the Pascal-Context `.mat` files
  (ids 0..458); the registered ignore id is 459 (not 65535) - no pixel should carry it.
* A-847 annotations are 16-bit TIFFs whose ignore value is 65535 (registered `ignore_label`).
* PAS-20b: annotations map VOC background to 20 (`annotations_detectron2_bg`); the model is
  prompted with the 59 names of `voc20b.json` (20 VOC classes then 39 Pascal-Context classes)
  and, in the official `VOCbEvaluator`, every predicted id >= 20 is folded into 20
  ("background") before scoring 21 classes.
* The reported mIoU values are those of the official README table (also in this project's
  `shared/docs/catseg-reference.md`); they were computed with detectron2's `SemSegEvaluator`,
  which averages only over classes present in the references (see
  `StreamingMeanIoU.compute_detectron2`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .mean_iou.mean_iou_core import is_torch_tensor

__all__ = [
    "Benchmark",
    "HubSource",
    "BENCHMARKS",
    "PAPER_BENCHMARKS",
    "REPORTED_MIOU",
    "get_benchmark",
    "list_benchmarks",
    "load_class_names",
    "default_class_names_dir",
    "OfficialLayout",
    "OFFICIAL_LAYOUTS",
]


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub dataset that may serve a benchmark without the official preparation.

    Only an *example*: unless `verified` is True nobody has checked here that its split, ids and
    images are identical to the official benchmark's. `reduce_labels` says whether its label ids
    need the hub-metric `reduce_labels` transform to match the benchmark's ids.
    """

    dataset_id: str
    split: str
    image_column: str
    label_column: str
    config: str | None = None
    reduce_labels: bool = False
    verified: bool = False
    note: str = ""


@dataclass(frozen=True)
class Benchmark:
    """Immutable description of one evaluation benchmark.

    Attributes:
        key (`str`):
            Canonical short name (`"a150"`).
        display_name (`str`):
            Column name in the paper's table (`"A-150"`).
        description (`str`):
            Human-readable dataset and split.
        num_classes (`int`):
            Number of class names the model is prompted with (entries of the JSON file).
        class_names_file (`str`):
            File name of the class-name list (`"ade150.json"`).
        ignore_index (`int`):
            Reference id that is not scored.
        label_bit_depth (`int`):
            8 or 16 (bits per annotation pixel).
        image_dir (`str`):
            Image folder relative to the data root (`$DETECTRON2_DATASETS`).
        annotation_dir (`str`):
            Annotation folder relative to the data root.
        image_extension (`str`):
            Image file extension, with the dot.
        annotation_extension (`str`):
            Annotation file extension, with the dot.
        detectron2_name (`str`):
            The official dataset name (`DATASETS.TEST` in `eval.sh`).
        num_eval_labels (`int`):
            Number of classes scored (`num_labels` of the metric): equals
            `num_classes` except for PAS-20b (21: 20 VOC classes + background).
        background_index (`int`, *optional*):
            PAS-20b only: predicted ids >= it are folded into it before scoring
            (see [`fold_predictions`]); None elsewhere.
        reported_miou_base (`float`, *optional*):
            Official mIoU (percent) of CAT-Seg ViT-B/16; None where not reported (COCO-Stuff).
        reported_miou_large (`float`, *optional*):
            Official mIoU (percent) of CAT-Seg ViT-L/14; None where not reported (COCO-Stuff).
        aliases (`tuple[str, ...]`, *optional*, defaults to `()`):
            Other accepted names (matched case-, space-, `-` and `_`-insensitively).
        hub (`HubSource`, *optional*):
            An example Hub dataset, or None when none is known.
        notes (`str`, *optional*, defaults to `""`):
            Provenance and caveats.
        layout (`str`, *optional*, defaults to `""`):
            The name of its prepared folder layout in `load_segmentation_dataset(layout=...)`
            (`"ade150"`, `"coco_stuff"`, ...), a key of `OFFICIAL_LAYOUTS`.
        prepare_script (`str`, *optional*, defaults to `""`):
            The official script that writes the annotation folder.
        train_image_dir (`str`, *optional*):
            Training image folder, for the datasets CAT-Seg trains on (COCO-Stuff; ADE-150 if its training
            annotations are converted the same way).
        train_annotation_dir (`str`, *optional*):
            Training annotation folder, for the same datasets.
    """

    key: str
    display_name: str
    description: str
    num_classes: int
    class_names_file: str
    ignore_index: int
    label_bit_depth: int
    image_dir: str
    annotation_dir: str
    image_extension: str
    annotation_extension: str
    detectron2_name: str
    num_eval_labels: int
    background_index: int | None = None
    reported_miou_base: float | None = None
    reported_miou_large: float | None = None
    aliases: tuple[str, ...] = ()
    hub: HubSource | None = None
    notes: str = field(default="", compare=False)
    layout: str = ""
    prepare_script: str = ""
    train_image_dir: str | None = None
    train_annotation_dir: str | None = None

    @property
    def is_16bit(self) -> bool:
        """Whether annotations are stored with 16 bits per pixel (ids or ignore value > 255)."""
        return self.label_bit_depth == 16

    @property
    def in_paper(self) -> bool:
        """Whether the paper reports this benchmark."""
        return self.reported_miou_base is not None

    def reported_miou(self, variant: str = "base") -> float | None:
        """Official mIoU (percent) for `variant` `"base"` (ViT-B/16) or `"large"` (ViT-L/14)."""
        variant = variant.lower()
        if variant in ("base", "b", "vit-b", "vitb", "vit-b/16"):
            return self.reported_miou_base
        if variant in ("large", "l", "vit-l", "vitl", "vit-l/14"):
            return self.reported_miou_large
        raise ValueError(f"unknown model variant {variant!r}; use 'base' or 'large'")

    def image_path(self, data_root: str | os.PathLike) -> Path:
        """`data_root / image_dir`."""
        return Path(data_root) / self.image_dir

    def annotation_path(self, data_root: str | os.PathLike) -> Path:
        """`data_root / annotation_dir`."""
        return Path(data_root) / self.annotation_dir

    def metric_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `StreamingMeanIoU` / the `evaluate` metric on this benchmark's
        prepared annotations (ids already contiguous, so no `reduce_labels` or `label_map`)."""
        return {"num_labels": self.num_eval_labels, "ignore_index": self.ignore_index}

    def fold_predictions(self, predictions: Any) -> Any:
        """Apply the benchmark's prediction post-processing before scoring.

        For PAS-20b, every id >= `background_index` becomes `background_index` (the official
        evaluator scores the 39 extra Pascal-Context prompts as "background"). Elsewhere the input
        is returned unchanged. Works on NumPy arrays and torch tensors; never modifies its input.
        """
        if self.background_index is None:
            return predictions
        bg = self.background_index
        if is_torch_tensor(predictions):
            return predictions.clamp(max=bg)
        return np.minimum(np.asarray(predictions), bg)


_OFFICIAL = "github.com/cvlab-kaist/CAT-Seg"

BENCHMARKS: dict[str, Benchmark] = {
    b.key: b
    for b in (
        Benchmark(
            key="a847",
            layout="ade847",
            prepare_script="prepare_ade20k_847.py",
            display_name="A-847",
            description="ADE20K-Full (847 classes), validation split",
            num_classes=847,
            class_names_file="ade847.json",
            ignore_index=65535,
            label_bit_depth=16,
            image_dir="ADE20K_2021_17_01/images_detectron2/validation",
            annotation_dir="ADE20K_2021_17_01/annotations_detectron2/validation",
            image_extension=".jpg",
            annotation_extension=".tif",
            detectron2_name="ade20k_full_sem_seg_freq_val_all",
            num_eval_labels=847,
            reported_miou_base=12.0,
            reported_miou_large=16.0,
            aliases=("ade847", "ade20k847", "ade20kfull", "adefull", "ade20kfullsemsegfreqvalall"),
            notes=(
                f"Paths, .tif and ignore 65535 from {_OFFICIAL} register_ade20k_847.py "
                "('gt is saved in 16-bit TIFF images'). The preparation script producing these "
                "folders was not available to verify."
            ),
        ),
        Benchmark(
            key="pc459",
            layout="pc459",
            prepare_script="prepare_pascal_context_459.py",
            display_name="PC-459",
            description="Pascal Context (459 classes), VOC2010 validation split",
            num_classes=459,
            class_names_file="pc459.json",
            ignore_index=459,
            label_bit_depth=16,
            image_dir="VOCdevkit/VOC2010/JPEGImages",
            annotation_dir="VOCdevkit/VOC2010/annotations_detectron2/pc459_val",
            image_extension=".jpg",
            annotation_extension=".tif",
            detectron2_name="context_459_test_sem_seg",
            num_eval_labels=459,
            reported_miou_base=19.0,
            reported_miou_large=23.8,
            aliases=("pascalcontext459", "context459", "pcontext459", "context459testsemseg"),
            notes=(
                "Annotations: TIFF of the .mat LabelMap minus 1 (ids 0..458, needs 16 bits; "
                "prepare_pascal_context_459.py). Registered ignore_label is 459, not 65535; a "
                "65535 could only arise from a 0 in LabelMap, which the official evaluator could "
                "not have handled, so official data are expected to contain neither (unverified: "
                "no annotation file was inspected)."
            ),
        ),
        Benchmark(
            key="a150",
            layout="ade150",
            prepare_script="prepare_ade20k_150.py",
            train_image_dir="ADEChallengeData2016/images/training",
            train_annotation_dir="ADEChallengeData2016/annotations_detectron2/training",
            display_name="A-150",
            description="ADE20K (SceneParsing, 150 classes), validation split",
            num_classes=150,
            class_names_file="ade150.json",
            ignore_index=255,
            label_bit_depth=8,
            image_dir="ADEChallengeData2016/images/validation",
            annotation_dir="ADEChallengeData2016/annotations_detectron2/validation",
            image_extension=".jpg",
            annotation_extension=".png",
            detectron2_name="ade20k_150_test_sem_seg",
            num_eval_labels=150,
            reported_miou_base=31.8,
            reported_miou_large=37.9,
            aliases=("ade150", "ade20k150", "ade20k", "ade", "ade20k150testsemseg"),
            hub=HubSource(
                dataset_id="zhoubolei/scene_parse_150",
                config="scene_parsing",
                split="validation",
                image_column="image",
                label_column="annotation",
                reduce_labels=True,
                verified=False,
                note=(
                    "Example only. Hub page shows configs scene_parsing/instance_segmentation, a "
                    "2k-row validation split, columns image/annotation, and a parquet export. Its "
                    "annotations are the raw ADE ids (0 = other, 1..150), which the official "
                    "prepare_ade20k_150.py turns into id-1 with 0 -> 255, i.e. reduce_labels=True."
                ),
            ),
            notes=f"prepare_ade20k_150.py: uint8 id - 1, so 0 (other) becomes 255 ({_OFFICIAL}).",
        ),
        Benchmark(
            key="pc59",
            layout="pc59",
            prepare_script="prepare_pascal_context_59.py",
            display_name="PC-59",
            description="Pascal Context (59 classes), VOC2010 validation split",
            num_classes=59,
            class_names_file="pc59.json",
            ignore_index=255,
            label_bit_depth=8,
            image_dir="VOCdevkit/VOC2010/JPEGImages",
            annotation_dir="VOCdevkit/VOC2010/annotations_detectron2/pc59_val",
            image_extension=".jpg",
            annotation_extension=".png",
            detectron2_name="context_59_test_sem_seg",
            num_eval_labels=59,
            reported_miou_base=57.5,
            reported_miou_large=63.3,
            aliases=("pascalcontext59", "context59", "pcontext59", "pascalcontext", "context59testsemseg"),
            notes=(
                "prepare_pascal_context_59.py: the 59 classes of trainval_merged.json to 0..58, "
                "background and everything else to 255."
            ),
        ),
        Benchmark(
            key="pas20",
            layout="voc20",
            prepare_script="prepare_voc.py",
            display_name="PAS-20",
            description="Pascal VOC 2012 (20 classes, background ignored), validation split",
            num_classes=20,
            class_names_file="voc20.json",
            ignore_index=255,
            label_bit_depth=8,
            image_dir="VOCdevkit/VOC2012/JPEGImages",
            annotation_dir="VOCdevkit/VOC2012/annotations_detectron2/val",
            image_extension=".jpg",
            annotation_extension=".png",
            detectron2_name="voc_2012_test_sem_seg",
            num_eval_labels=20,
            reported_miou_base=94.6,
            reported_miou_large=97.0,
            aliases=("voc20", "voc", "pascalvoc", "pascalvoc20", "voc2012", "voc2012testsemseg"),
            notes=(
                "prepare_voc.py: SegmentationClassAug val masks, VOC ids 1..20 -> 0..19, background "
                "0 and 255 -> 255. Images from JPEGImages (registered image root)."
            ),
        ),
        Benchmark(
            key="pas20b",
            layout="voc20b",
            prepare_script="prepare_voc.py",
            display_name="PAS-20b",
            description="Pascal VOC 2012 with background as a class, validation split",
            num_classes=59,
            class_names_file="voc20b.json",
            ignore_index=255,
            label_bit_depth=8,
            image_dir="VOCdevkit/VOC2012/JPEGImages",
            annotation_dir="VOCdevkit/VOC2012/annotations_detectron2_bg/val",
            image_extension=".jpg",
            annotation_extension=".png",
            detectron2_name="voc_2012_test_background_sem_seg",
            num_eval_labels=21,
            background_index=20,
            reported_miou_base=77.3,
            reported_miou_large=82.5,
            aliases=("voc20b", "vocb", "pascalvocb", "pascalvoc20b", "voc2012testbackgroundsemseg"),
            notes=(
                "prepare_voc.py (bg variant): background 0 -> 20. Prompts: the 59 names of "
                "voc20b.json; official VOCbEvaluator folds predictions >= 20 into 20 and scores 21 "
                "classes (train_net.py)."
            ),
        ),
        Benchmark(
            key="coco_stuff",
            layout="coco_stuff",
            prepare_script="prepare_coco_stuff.py",
            train_image_dir="coco-stuff/images/train2017",
            train_annotation_dir="coco-stuff/annotations_detectron2/train2017",
            display_name="COCO-Stuff",
            description="COCO-Stuff-164k (171 classes), val2017 split; the training set's validation",
            num_classes=171,
            class_names_file="coco.json",
            ignore_index=255,
            label_bit_depth=8,
            image_dir="coco-stuff/images/val2017",
            annotation_dir="coco-stuff/annotations_detectron2/val2017",
            image_extension=".jpg",
            annotation_extension=".png",
            detectron2_name="coco_2017_test_stuff_all_sem_seg",
            num_eval_labels=171,
            aliases=("cocostuff", "coco", "cocostuff171", "coco171", "cocostuff164k", "coco2017teststuffallsemseg"),
            notes=(
                "register_coco_stuff.py roots it at 'coco-stuff/' (datasets/README.md's tree says "
                "'coco/'; the registered path wins). Not a zero-shot benchmark: CAT-Seg trains on "
                "its train2017 split."
            ),
        ),
    )
}

#: Benchmark keys in the column order of the paper's table.
PAPER_BENCHMARKS: tuple[str, ...] = ("a847", "pc459", "a150", "pc59", "pas20", "pas20b")

#: Official mIoU (percent) per model variant, keyed by benchmark key, in paper column order.
REPORTED_MIOU: dict[str, dict[str, float]] = {
    variant: {key: BENCHMARKS[key].reported_miou(variant) for key in PAPER_BENCHMARKS}
    for variant in ("base", "large")
}


#: The benchmark class-name files shipped as package data (copies of the official lists).
PACKAGED_CLASS_NAMES_DIR = Path(__file__).resolve().parent / "class_names"


def _normalise(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in " -_/.")


def _build_alias_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for bench in BENCHMARKS.values():
        for alias in (bench.key, bench.display_name, bench.class_names_file.rsplit(".", 1)[0], *bench.aliases):
            norm = _normalise(alias)
            owner = index.setdefault(norm, bench.key)
            if owner != bench.key:  # pragma: no cover - guards the table above
                raise RuntimeError(f"alias {alias!r} is ambiguous between {owner} and {bench.key}")
    return index


_ALIASES = _build_alias_index()


def list_benchmarks(paper_only: bool = False) -> list[str]:
    """Canonical benchmark keys: the paper's six in table order, then `coco_stuff` unless
    `paper_only`."""
    keys = list(PAPER_BENCHMARKS)
    if not paper_only:
        keys += [k for k in BENCHMARKS if k not in PAPER_BENCHMARKS]
    return keys


def get_benchmark(name: str | Benchmark) -> Benchmark:
    """Look a benchmark up by key, display name or alias (`"a150"`, `"A-150"`, `"ade150"`,
    `"ADE20K-150"`, the detectron2 dataset name ...), ignoring case, spaces, `-`, `_`.

    Raises:
        ValueError: for an unknown name; the message lists the valid keys and display names.
    """
    if isinstance(name, Benchmark):
        return name
    key = _ALIASES.get(_normalise(name))
    if key is None:
        valid = ", ".join(f"{k} ({BENCHMARKS[k].display_name})" for k in list_benchmarks())
        raise ValueError(f"unknown benchmark {name!r}; valid names: {valid} (aliases such as 'ade150' also work)")
    return BENCHMARKS[key]


def default_class_names_dir() -> Path:
    """Folder searched for the class-name JSON files when none is given.

    `$CATSEG_SHARED_DIR/benchmarks` when the environment variable is set (it points at the
    `shared` folder), else the copies shipped inside the package (`catseg_hf/evaluation/
    class_names`), so that an installed package finds them wherever it runs.
    """
    shared = os.environ.get("CATSEG_SHARED_DIR")
    if shared:
        return Path(shared).expanduser() / "benchmarks"
    return PACKAGED_CLASS_NAMES_DIR


def _benchmark_or_none(source: Any) -> Benchmark | None:
    """The benchmark `source` names, or None when it is something else (a path, a dataset, a Hub id)."""
    if isinstance(source, Benchmark):
        return source
    if not isinstance(source, str) or Path(source).expanduser().exists():
        return None  # an existing file or folder named like a benchmark is a dataset source
    key = _ALIASES.get(_normalise(source))
    return BENCHMARKS[key] if key is not None else None


def _benchmark_class_names(bench: Benchmark, path_or_dir: str | os.PathLike | None) -> list[str]:
    base = Path(path_or_dir).expanduser() if path_or_dir is not None else default_class_names_dir()
    if base.is_file():
        path = base
    else:
        candidates = [base / bench.class_names_file, base / "benchmarks" / bench.class_names_file]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            searched = ", ".join(str(c) for c in candidates)
            raise FileNotFoundError(
                f"class-name file {bench.class_names_file!r} for {bench.display_name} not found "
                f"(searched {searched}); pass path_or_dir or set CATSEG_SHARED_DIR to the shared folder"
            )
    with open(path, encoding="utf-8") as handle:
        names = json.load(handle)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path} must hold a JSON list of strings")
    if len(names) != bench.num_classes:
        raise ValueError(
            f"{path} has {len(names)} class names but {bench.display_name} has {bench.num_classes} classes"
        )
    return names


def load_class_names(
    source: Any = None,
    path_or_dir: str | os.PathLike | None = None,
    *,
    class_names_file: str | os.PathLike | None = None,
) -> list[str]:
    """Class names (index = class id) of a benchmark or of any dataset: the one lookup of the project.

    Args:
        source (`Any`, *optional*):
            One of

            - a [`Benchmark`] or any name [`get_benchmark`] accepts (`"a150"`, `"ADE-150"`,
              `"coco_stuff"`, ...): its JSON list, read from `path_or_dir` (a file, or a folder
              holding `class_names_file` directly or in a `benchmarks/` sub-folder), by default from
              [`default_class_names_dir`] (the copies shipped with the package);
            - a dataset object (`Dataset`, `IterableDataset`, `DatasetDict`): a `ClassLabel` feature,
              else an `id2label` JSON object stored in `info.description`;
            - a local folder: `id2label.json` / `class_names.json` / `classes.json` / `labels.json` in
              it, or the features of a `save_to_disk` folder;
            - a Hub dataset id: the same file names in the dataset repository, then its features.
        path_or_dir (`str | os.PathLike`, *optional*):
            For a benchmark, where its list lives (see above); otherwise the same as
            `class_names_file`.
        class_names_file (`str | os.PathLike`, *optional*):
            A JSON list of names (CAT-Seg's `datasets/*.json`) or an `{id: name}` /
            `{"id2label": {...}}` object; read instead of looking at `source` (for a benchmark, its
            length is checked).

    Returns:
        The names exactly as stored (no stripping: e.g. A-150's `"bed "` keeps its space).

    Raises:
        FileNotFoundError: a benchmark's list is not where it was looked for (the message names the places).
        ValueError: the file is malformed, has the wrong length for the benchmark, or no names can be found.
    """
    bench = _benchmark_or_none(source)
    location = class_names_file if class_names_file is not None else path_or_dir
    if bench is not None:
        return _benchmark_class_names(bench, location)
    # Datasets: lazily, so that importing the registry never imports `datasets`.
    from ..data.dataset_class_names import dataset_class_names

    return dataset_class_names(source, location)


@dataclass(frozen=True)
class OfficialLayout:
    """Where one of CAT-Seg's prepared datasets lives under a data root: a view of a [`Benchmark`]
    for `load_segmentation_dataset(layout=...)`.

    Attributes:
        splits (`Mapping[str, tuple[str, str]]`):
            Split name -> `(image_dir, annotation_dir)`, relative to the data root.
        num_classes (`int`):
            Number of label ids in the prepared masks (PAS-20b: 21, background included).
        ignore_index (`int`, *optional*, defaults to `255`):
            Ignore value stored in the prepared masks.
        class_names_file (`str`, *optional*, defaults to `""`):
            Name of the class-name JSON (shipped with the package).
        note (`str`, *optional*, defaults to `""`):
            The preparation script, then provenance and caveats.
    """

    splits: Mapping[str, tuple[str, str]]
    num_classes: int
    ignore_index: int = 255
    class_names_file: str = ""
    note: str = ""


def _layout_of(bench: Benchmark) -> OfficialLayout:
    splits = {"validation": (bench.image_dir, bench.annotation_dir)}
    if bench.train_image_dir and bench.train_annotation_dir:
        splits = {"train": (bench.train_image_dir, bench.train_annotation_dir), **splits}
    return OfficialLayout(
        splits=splits,
        num_classes=bench.num_eval_labels,
        ignore_index=bench.ignore_index,
        class_names_file=bench.class_names_file,
        note=f"{bench.prepare_script}; {bench.notes}",
    )


#: CAT-Seg's prepared folder layouts by layout name (`"coco_stuff"`, `"ade150"`, `"ade847"`, `"pc59"`,
#: `"pc459"`, `"voc20"`, `"voc20b"`), derived from `BENCHMARKS`. Paths are those written by the official
#: preparation scripts under `$DETECTRON2_DATASETS`; only COCO-Stuff (and ADE-150, if converted) has a
#: training split, the other benchmarks are evaluation-only.
OFFICIAL_LAYOUTS: dict[str, OfficialLayout] = {bench.layout: _layout_of(bench) for bench in BENCHMARKS.values()}
