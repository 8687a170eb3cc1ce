"""Tests of the benchmark registry (names, aliases, facts) and of loading class-name files."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import catseg_hf.evaluation
from catseg_hf.evaluation import (
    BENCHMARKS,
    PAPER_BENCHMARKS,
    REPORTED_MIOU,
    Benchmark,
    default_class_names_dir,
    get_benchmark,
    list_benchmarks,
    load_class_names,
)

EXPECTED = {
    # key: (display name, classes, json, ignore, 16-bit, annotation extension)
    "a847": ("A-847", 847, "ade847.json", 65535, True, ".tif"),
    "pc459": ("PC-459", 459, "pc459.json", 459, True, ".tif"),
    "a150": ("A-150", 150, "ade150.json", 255, False, ".png"),
    "pc59": ("PC-59", 59, "pc59.json", 255, False, ".png"),
    "pas20": ("PAS-20", 20, "voc20.json", 255, False, ".png"),
    "pas20b": ("PAS-20b", 59, "voc20b.json", 255, False, ".png"),
    "coco_stuff": ("COCO-Stuff", 171, "coco.json", 255, False, ".png"),
}


def _shared_benchmarks_dir() -> Path:
    # The shared folder's copies (the default, without CATSEG_SHARED_DIR, is the package's own copies).
    shared = os.environ.get("CATSEG_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared"
    return Path(shared) / "benchmarks"


needs_shared = pytest.mark.skipif(
    not _shared_benchmarks_dir().is_dir(),
    reason=f"shared class-name folder {_shared_benchmarks_dir()} not found (set CATSEG_SHARED_DIR to the shared dir)",
)


def test_list_and_order():
    assert list_benchmarks() == ["a847", "pc459", "a150", "pc59", "pas20", "pas20b", "coco_stuff"]
    assert list_benchmarks(paper_only=True) == list(PAPER_BENCHMARKS)
    assert set(BENCHMARKS) == set(EXPECTED)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_facts(key):
    bench = get_benchmark(key)
    display, classes, json_name, ignore, is_16bit, ext = EXPECTED[key]
    assert (bench.key, bench.display_name, bench.num_classes, bench.class_names_file) == (key, display, classes, json_name)
    assert (bench.ignore_index, bench.is_16bit, bench.annotation_extension) == (ignore, is_16bit, ext)
    assert bench.label_bit_depth == (16 if is_16bit else 8)
    assert bench.image_extension == ".jpg"
    assert not os.path.isabs(bench.image_dir) and not os.path.isabs(bench.annotation_dir)
    assert bench.image_path("/data") == Path("/data") / bench.image_dir
    assert bench.annotation_path("/data") == Path("/data") / bench.annotation_dir
    assert bench.metric_kwargs() == {"num_labels": bench.num_eval_labels, "ignore_index": ignore}
    if bench.hub is not None:
        assert not bench.hub.verified  # only examples so far


def test_layouts():
    assert get_benchmark("a150").image_dir == "ADEChallengeData2016/images/validation"
    assert get_benchmark("a150").annotation_dir == "ADEChallengeData2016/annotations_detectron2/validation"
    assert get_benchmark("a847").image_dir == "ADE20K_2021_17_01/images_detectron2/validation"
    assert get_benchmark("a847").annotation_dir == "ADE20K_2021_17_01/annotations_detectron2/validation"
    assert get_benchmark("pc59").annotation_dir == "VOCdevkit/VOC2010/annotations_detectron2/pc59_val"
    assert get_benchmark("pc459").annotation_dir == "VOCdevkit/VOC2010/annotations_detectron2/pc459_val"
    assert get_benchmark("pas20").annotation_dir == "VOCdevkit/VOC2012/annotations_detectron2/val"
    assert get_benchmark("pas20b").annotation_dir == "VOCdevkit/VOC2012/annotations_detectron2_bg/val"
    assert get_benchmark("coco_stuff").annotation_dir == "coco-stuff/annotations_detectron2/val2017"


def test_reported_miou():
    base = [12.0, 19.0, 31.8, 57.5, 94.6, 77.3]
    large = [16.0, 23.8, 37.9, 63.3, 97.0, 82.5]
    assert [REPORTED_MIOU["base"][k] for k in PAPER_BENCHMARKS] == base
    assert [get_benchmark(k).reported_miou("large") for k in PAPER_BENCHMARKS] == large
    assert get_benchmark("coco_stuff").reported_miou("base") is None and not get_benchmark("coco").in_paper
    with pytest.raises(ValueError, match="base"):
        get_benchmark("a150").reported_miou("huge")


@pytest.mark.parametrize(
    "alias, key",
    [
        ("a150", "a150"), ("A-150", "a150"), ("ade150", "a150"), ("ADE20K-150", "a150"), ("ade20k_150_test_sem_seg", "a150"),
        ("A-847", "a847"), ("ade847", "a847"), ("ADE20K-Full", "a847"),
        ("PC-459", "pc459"), ("pascal_context_459", "pc459"),
        ("PC-59", "pc59"), ("pc59", "pc59"), ("context_59", "pc59"),
        ("PAS-20", "pas20"), ("voc20", "pas20"), ("Pascal VOC", "pas20"),
        ("PAS-20b", "pas20b"), ("voc20b", "pas20b"), ("voc_2012_test_background_sem_seg", "pas20b"),
        ("coco_stuff", "coco_stuff"), ("COCO-Stuff", "coco_stuff"), ("coco", "coco_stuff"),
    ],
)
def test_aliases(alias, key):
    assert get_benchmark(alias).key == key


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_benchmark("cityscapes")
    message = str(info.value)
    assert "cityscapes" in message
    for key in list_benchmarks():
        assert key in message and BENCHMARKS[key].display_name in message


def test_benchmarks_are_immutable():
    bench = get_benchmark("a150")
    with pytest.raises(dataclasses.FrozenInstanceError):
        bench.num_classes = 3
    assert get_benchmark(bench) is bench
    assert isinstance(hash(bench), int)


def test_pas20b_folds_extra_prompts_into_background():
    bench = get_benchmark("pas20b")
    assert (bench.num_classes, bench.num_eval_labels, bench.background_index) == (59, 21, 20)
    pred = np.array([[0, 19, 20, 21, 58]])
    folded = bench.fold_predictions(pred)
    np.testing.assert_array_equal(folded, [[0, 19, 20, 20, 20]])
    np.testing.assert_array_equal(pred, [[0, 19, 20, 21, 58]])  # input untouched
    assert torch.equal(bench.fold_predictions(torch.tensor([3, 40])), torch.tensor([3, 20]))
    same = np.array([5, 100])
    assert get_benchmark("a150").fold_predictions(same) is same


@needs_shared
@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_class_counts_match_shared_json(key):
    bench = get_benchmark(key)
    path = _shared_benchmarks_dir() / bench.class_names_file
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    names = load_class_names(key)
    assert names == raw and len(names) == bench.num_classes
    # The same file through an explicit file path, its folder, and the shared folder itself.
    assert load_class_names(bench, path) == raw
    assert load_class_names(key, path.parent) == raw
    assert load_class_names(key, path.parent.parent) == raw


@needs_shared
def test_voc20b_starts_with_voc20_and_names_are_kept_verbatim():
    voc20 = load_class_names("pas20")
    voc20b = load_class_names("pas20b")
    assert voc20b[:20] == voc20
    assert "bed " in load_class_names("a150")  # trailing space kept (official file)


def test_environment_variable_and_errors(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "benchmarks").mkdir(parents=True)
    (shared / "benchmarks" / "voc20.json").write_text(json.dumps([f"c{i}" for i in range(20)]))
    monkeypatch.setenv("CATSEG_SHARED_DIR", str(shared))
    assert default_class_names_dir() == shared / "benchmarks"
    assert load_class_names("PAS-20") == [f"c{i}" for i in range(20)]
    with pytest.raises(FileNotFoundError, match="ade150.json"):
        load_class_names("a150")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(["a", "b"]))
    with pytest.raises(ValueError, match="2 class names"):
        load_class_names("pas20", bad)
    bad.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="list of strings"):
        load_class_names("pas20", bad)


def test_default_dir_without_environment(monkeypatch):
    monkeypatch.delenv("CATSEG_SHARED_DIR", raising=False)
    # Without the variable: the copies shipped inside the package.
    assert default_class_names_dir() == Path(catseg_hf.evaluation.__file__).resolve().parent / "class_names"
    assert len(load_class_names("a150")) == 150
    assert isinstance(get_benchmark("a150"), Benchmark)
