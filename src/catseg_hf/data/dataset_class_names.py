"""Class names read from datasets themselves: JSON name files, `ClassLabel` features, `info.description`, Hub repos.

The entry point is `catseg_hf.evaluation.load_class_names` (also exported by `catseg_hf.data`): it answers
benchmark names from the registry and hands everything else to `dataset_class_names` here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["dataset_class_names", "names_from_json"]


def names_from_json(path: str | os.PathLike) -> list[str]:
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
    """`id2label` embedded in the dataset description as JSON (some converted datasets do this)."""
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


def dataset_class_names(source_or_dataset: Any = None, class_names_file: str | os.PathLike | None = None) -> list[str]:
    """Class names (index = class id) of a dataset that is not a registered benchmark.

    Looked up, in order:

    1. `class_names_file`: a JSON list of names (CAT-Seg's `datasets/*.json`) or an
       `{id: name}` / `{"id2label": {...}}` object;
    2. a dataset object (`Dataset` / `IterableDataset` / `DatasetDict`): a `ClassLabel`
       feature, else an `id2label` JSON object stored in `info.description`;
    3. a local directory: `id2label.json` / `class_names.json` / `classes.json` /
       `labels.json` inside it;
    4. a Hub dataset id: the same file names in the dataset repository (needs network or cache).

    Raises:
        ValueError: when no class names can be found (the message says what to pass).
    """
    import datasets

    if class_names_file is not None:
        return names_from_json(class_names_file)
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
    path = Path(source)
    if path.is_dir():
        for name in _CLASS_NAME_FILES:
            if (path / name).is_file():
                return names_from_json(path / name)
        from .loading import is_save_to_disk_dir

        if is_save_to_disk_dir(path):
            return dataset_class_names(datasets.load_from_disk(str(path)))
        raise ValueError(f"No class-name file ({', '.join(_CLASS_NAME_FILES)}) in {path}; pass class_names_file=.")
    if path.exists():
        if path.suffix == ".json":
            return names_from_json(path)
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
            return names_from_json(local)
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
