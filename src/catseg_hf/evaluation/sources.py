"""Where each benchmark's data come from: `--source`/`--split`-style options, `DataSource`, and loading the data.

Data come either from the official folder layout (`datasets/README.md` of the official CAT-Seg repository) under a
data root, with the paths of the registry `catseg_hf.evaluation.benchmarks`, or from any parquet / `save_to_disk` /
Hub dataset through `catseg_hf.data.load_segmentation_dataset`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..messages import one_line as _one_line
from .benchmarks import PAPER_BENCHMARKS, Benchmark, get_benchmark

HUB_SOURCE_KEYWORD = "hub"


class EvaluationSetupError(RuntimeError):
    """A problem with the inputs of an evaluation (missing data folder, bad option, unusable model folder).

    Its message is a single line that says what is wrong and what was expected; `scripts/evaluate.py` prints it
    without a traceback.
    """


@dataclass(frozen=True)
class DataSource:
    """Where the images and annotations of one benchmark come from.

    Attributes:
        kind (`str`):
            `"layout"` (official folder layout under `location`, the data root) or `"dataset"` (`location`
            is a parquet file / glob / folder, a `save_to_disk` folder or a Hub dataset id).
        location (`str`):
            Data root or dataset location.
        split (`str`, *optional*, defaults to `"validation"`):
            Split of a `"dataset"` source.
        image_column (`str`, *optional*):
            Image column of a `"dataset"` source (auto-detected when None).
        label_column (`str`, *optional*):
            Label column of a `"dataset"` source (auto-detected when None).
        reduce_labels (`bool`, *optional*, defaults to `False`):
            Apply the `reduce_labels` transform (0 -> ignore, other ids - 1) to a dataset's labels.
        dataset_config (`str`, *optional*):
            Configuration name of a Hub dataset.
        note (`str`, *optional*, defaults to `""`):
            Caveat shown with the results (e.g. an unverified Hub copy).
    """

    kind: str
    location: str
    split: str = "validation"
    image_column: str | None = None
    label_column: str | None = None
    reduce_labels: bool = False
    dataset_config: str | None = None
    note: str = ""

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for `results.json`."""
        info: dict[str, Any] = {"kind": self.kind, "location": self.location}
        if self.kind == "dataset":
            info.update(
                split=self.split,
                image_column=self.image_column,
                label_column=self.label_column,
                reduce_labels=self.reduce_labels,
                dataset_config=self.dataset_config,
            )
        if self.note:
            info["note"] = self.note
        return info


def parse_benchmark_list(text: str | Sequence[str]) -> list[Benchmark]:
    """Benchmarks from a comma-separated list of names (aliases allowed); `"all"` / `"paper"` give the paper's six
    in table order. Duplicates are dropped, the order is kept.

    Raises:
        EvaluationSetupError: for an unknown name (the message lists the valid ones).
    """
    items = [text] if isinstance(text, str) else list(text)
    names = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not names:
        raise EvaluationSetupError("no benchmark given; pass e.g. --benchmarks a847,pc459,a150,pc59,pas20,pas20b")
    benchmarks: list[Benchmark] = []
    for name in names:
        if name.lower() in ("all", "paper"):
            found = [get_benchmark(key) for key in PAPER_BENCHMARKS]
        else:
            try:
                found = [get_benchmark(name)]
            except ValueError as err:
                raise EvaluationSetupError(_one_line(err)) from None
        for bench in found:
            if bench not in benchmarks:
                benchmarks.append(bench)
    return benchmarks


def parse_keyed_values(values: Iterable[str] | None, option: str, allow_default: bool = True) -> tuple[str | None, dict[str, str]]:
    """Parse repeated `KEY=VALUE` command-line values, where KEY is a benchmark name (any alias).

    Args:
        values (`Iterable[str] | None`):
            The raw strings (e.g. `["a150=/data/ade.parquet", "pc59=org/pc59"]`).
        option (`str`):
            The option's name, for error messages.
        allow_default (`bool`, *optional*, defaults to `True`):
            Accept one value without `KEY=`, applying to every benchmark.

    Returns:
        `(default, {benchmark key: value})`.

    Raises:
        EvaluationSetupError: for a malformed value, an unknown benchmark or a repeated key.
    """
    default: str | None = None
    per_key: dict[str, str] = {}
    for raw in values or ():
        name, sep, value = str(raw).partition("=")
        if not sep:
            if not allow_default:
                raise EvaluationSetupError(f"{option} expects BENCHMARK=VALUE (e.g. a150=/data/ade150.parquet), got {raw!r}")
            if default is not None:
                raise EvaluationSetupError(f"{option} given twice without a benchmark name ({default!r} and {raw!r})")
            default = raw
            continue
        try:
            key = get_benchmark(name.strip()).key
        except ValueError as err:
            raise EvaluationSetupError(f"{option} {raw!r}: {_one_line(err)}") from None
        if not value:
            raise EvaluationSetupError(f"{option} {raw!r}: the value after '=' is empty")
        if key in per_key:
            raise EvaluationSetupError(f"{option} gives {key} twice ({per_key[key]!r} and {value!r})")
        per_key[key] = value
    return default, per_key


def resolve_data_source(
    benchmark: str | Benchmark,
    data_root: str | os.PathLike | None = None,
    source: str | None = None,
    *,
    split: str = "validation",
    image_column: str | None = None,
    label_column: str | None = None,
    reduce_labels: bool = False,
) -> DataSource:
    """Decide where a benchmark's data come from.

    Args:
        benchmark (`str | Benchmark`):
            The benchmark (or its name).
        data_root (`str | os.PathLike`, *optional*):
            Root of the official layout (default `$DETECTRON2_DATASETS`, else `"datasets"`, as the official
            code); used when `source` is None.
        source (`str`, *optional*):
            A parquet path / glob / folder, a `save_to_disk` folder, a Hub dataset id, or `"hub"` for the
            example Hub copy listed in the registry ([`Benchmark.hub`], unverified unless marked so).
        split (`str`, *optional*, defaults to `"validation"`):
            Split of a dataset source.
        image_column (`str`, *optional*):
            Image column of a dataset source (auto-detected when None).
        label_column (`str`, *optional*):
            Label column of a dataset source (auto-detected when None).
        reduce_labels (`bool`, *optional*, defaults to `False`):
            Whether to apply the `reduce_labels` transform to a dataset source's labels.
    """
    bench = get_benchmark(benchmark)
    if source is None:
        root = data_root if data_root is not None else os.environ.get("DETECTRON2_DATASETS", "datasets")
        return DataSource(kind="layout", location=str(root))
    if source == HUB_SOURCE_KEYWORD:
        hub = bench.hub
        if hub is None:
            raise EvaluationSetupError(
                f"{bench.display_name}: no example Hub dataset is known; give --source {bench.key}=PARQUET_OR_HUB_ID "
                "or prepare the official layout under --data-root"
            )
        note = "" if hub.verified else (
            f"example Hub copy {hub.dataset_id}: not verified to equal the official benchmark; {hub.note}"
        )
        return DataSource(
            kind="dataset",
            location=hub.dataset_id,
            split=hub.split,
            image_column=image_column or hub.image_column,
            label_column=label_column or hub.label_column,
            reduce_labels=reduce_labels or hub.reduce_labels,
            dataset_config=hub.config,
            note=_one_line(note),
        )
    return DataSource(
        kind="dataset",
        location=str(source),
        split=split,
        image_column=image_column,
        label_column=label_column,
        reduce_labels=reduce_labels,
    )


def check_data_source(benchmark: str | Benchmark, source: DataSource) -> None:
    """Fail early, with one line naming the expected path, when an official-layout folder is missing.

    Dataset sources are checked when they are loaded (a Hub id cannot be checked without loading it).

    Raises:
        EvaluationSetupError: naming the missing folder.
    """
    bench = get_benchmark(benchmark)
    if source.kind != "layout":
        return
    root = Path(source.location)
    for what, path in (("image", bench.image_path(root)), ("annotation", bench.annotation_path(root))):
        if not path.is_dir():
            raise EvaluationSetupError(
                f"{bench.display_name}: {what} folder not found: {path} (expected the official CAT-Seg layout under "
                f"--data-root {root}, as made by the official datasets/prepare_*.py scripts; or pass "
                f"--source {bench.key}=PARQUET_OR_HUB_ID)"
            )


def load_benchmark_data(benchmark: str | Benchmark, source: DataSource):
    """The benchmark's examples as a [`datasets.Dataset`] with `image` / `label` columns (decoded lazily).

    Official layout: images of the registry's image folder paired by file stem with the annotations of its annotation
    folder (images without annotation are skipped, as detectron2 only evaluates annotated images; VOC's
    `JPEGImages` holds many more). Annotations keep their stored values (16-bit ids and ignore values included).

    Raises:
        EvaluationSetupError: for missing folders or unreadable / unpaired data (one line).
    """
    from ..data.loading import load_segmentation_dataset

    bench = get_benchmark(benchmark)
    check_data_source(bench, source)
    try:
        if source.kind == "layout":
            root = Path(source.location)
            dataset = load_segmentation_dataset(
                image_dir=bench.image_path(root),
                mask_dir=bench.annotation_path(root),
                on_unmatched="skip_images",
                ignore_index=bench.ignore_index,
            )
        else:
            load_kwargs = {"name": source.dataset_config} if source.dataset_config else {}
            dataset = load_segmentation_dataset(
                source.location,
                split=source.split,
                image_column=source.image_column,
                label_column=source.label_column,
                reduce_labels=source.reduce_labels,
                ignore_index=bench.ignore_index,
                **load_kwargs,
            )
    except (OSError, ValueError, TypeError) as err:  # OSError covers missing files and an unreachable Hub
        raise EvaluationSetupError(f"{bench.display_name}: cannot load data from {source.location}: {_one_line(err)}") from err
    if len(dataset) == 0:
        raise EvaluationSetupError(f"{bench.display_name}: the data source {source.location} holds no example")
    return dataset


# ==================================================================================================== model side
