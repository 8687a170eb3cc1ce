"""End-to-end test of scripts/evaluate.py on a tiny benchmark, in the official folder layout and as parquet.

The expected numbers are computed here independently of the runner: the same saved model and processor, the images
read with PIL, the official test resize, one processor call per batch with the class names as text (so the class
embeddings come from the model's own forward), the processor's post-processing to the annotation size, then a
StreamingMeanIoU. The script must give exactly the same counts.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catseg_hf import CATSegForSemanticSegmentation, CATSegProcessor
from catseg_hf.data.transforms import resize_shortest_edge
from catseg_hf.evaluation import StreamingMeanIoU, get_benchmark, load_class_names
from catseg_hf.evaluation.runner import load_benchmark_data, prepare_label, resolve_data_source
from catseg_hf.testing_utils import load_script, save_tiny_model_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "evaluate.py"
LIMIT = 3
BATCH_SIZE = 2
# Image sizes (height, width) of the annotated test images, sorted by file stem; the 4th is cut by --limit.
SIZES = [(40, 56), (56, 40), (48, 48), (40, 56)]
VOC_IMAGES = "VOCdevkit/VOC2012/JPEGImages"
VOC_ANNOTATIONS = "VOCdevkit/VOC2012/annotations_detectron2/val"
VOC_BG_ANNOTATIONS = "VOCdevkit/VOC2012/annotations_detectron2_bg/val"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bpe_path: Path) -> Path:
    """A random tiny CAT-Seg with its processor (tokenizer from the shared BPE file) saved in one folder."""
    return save_tiny_model_folder(tmp_path_factory.mktemp("tiny_model"), bpe_path)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """PAS-20 / PAS-20b in the official layout: 4 annotated images plus one image without annotation (VOC's
    JPEGImages holds more images than the validation split)."""
    root = tmp_path_factory.mktemp("datasets")
    rng = np.random.default_rng(0)
    images, annotations, bg_annotations = (root / d for d in (VOC_IMAGES, VOC_ANNOTATIONS, VOC_BG_ANNOTATIONS))
    for folder in (images, annotations, bg_annotations):
        folder.mkdir(parents=True)
    for index, (height, width) in enumerate(SIZES):
        stem = f"2007_{index:06d}"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images / f"{stem}.jpg")
        label = rng.integers(0, 20, (height, width)).astype(np.uint8)
        label[: height // 5] = 255  # VOC's background/border: ignored in PAS-20
        Image.fromarray(label).save(annotations / f"{stem}.png")
        with_bg = label.copy()
        with_bg[: height // 8] = 20  # PAS-20b keeps background as class 20
        Image.fromarray(with_bg).save(bg_annotations / f"{stem}.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / "2008_999999.jpg")
    return root


@pytest.fixture(scope="module")
def voc_parquet(tmp_path_factory, voc_root: Path) -> Path:
    """The same PAS-20 examples as a parquet file, with non-standard column names and the very same file bytes."""
    import datasets

    stems = sorted(p.stem for p in (voc_root / VOC_ANNOTATIONS).glob("*.png"))
    table = {
        "img": [{"bytes": (voc_root / VOC_IMAGES / f"{s}.jpg").read_bytes(), "path": None} for s in stems],
        "ann": [{"bytes": (voc_root / VOC_ANNOTATIONS / f"{s}.png").read_bytes(), "path": None} for s in stems],
    }
    features = datasets.Features({"img": datasets.Image(), "ann": datasets.Image()})
    path = tmp_path_factory.mktemp("parquet") / "pas20_val.parquet"
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))
    return path


@pytest.fixture(scope="module")
def expected_counts(model_dir: Path, voc_root: Path, shared_path: Path):
    """``expected_counts(key)``: the directly computed metric of a benchmark (computed once per module)."""
    model = CATSegForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = CATSegProcessor.from_pretrained(model_dir)
    cache: dict[str, StreamingMeanIoU] = {}

    def get(key: str) -> StreamingMeanIoU:
        if key not in cache:
            cache[key] = direct_counts(model, processor, voc_root, key, shared_path)
        return cache[key]

    return get


def direct_counts(model, processor, voc_root: Path, key: str, shared_path: Path) -> StreamingMeanIoU:
    """The expected metric, computed without the runner (see the module docstring)."""
    bench = get_benchmark(key)
    names = load_class_names(bench, shared_path / "benchmarks")
    annotation_dir = voc_root / (VOC_BG_ANNOTATIONS if key == "pas20b" else VOC_ANNOTATIONS)
    stems = sorted(p.stem for p in annotation_dir.glob("*.png"))[:LIMIT]
    metric = StreamingMeanIoU(num_labels=bench.num_eval_labels, ignore_index=bench.ignore_index)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see run_script: one thread is much faster on a busy 2-core machine
    try:
        _accumulate(model, processor, names, voc_root, annotation_dir, stems, key, metric)
    finally:
        torch.set_num_threads(threads)
    return metric


def _accumulate(model, processor, names, voc_root, annotation_dir, stems, key, metric) -> None:
    """Batches of BATCH_SIZE images, as the script groups them (same views per forward, so bit-identical logits)."""
    for first in range(0, len(stems), BATCH_SIZE):
        batch = stems[first : first + BATCH_SIZE]
        images = [
            resize_shortest_edge(np.asarray(Image.open(voc_root / VOC_IMAGES / f"{s}.jpg").convert("RGB")), 640, 2560)
            for s in batch
        ]
        labels = [np.asarray(Image.open(annotation_dir / f"{s}.png")).astype(np.int64) for s in batch]
        inputs = processor(images=images, text=names, mode="sliding", return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        predictions = processor.post_process_semantic_segmentation(
            outputs, target_sizes=[lab.shape for lab in labels], image_sizes=[image.shape[:2] for image in images]
        )
        for prediction, label in zip(predictions, labels):
            assert prediction.shape == label.shape
            if key == "pas20b":
                prediction = prediction.clamp(max=20)  # the 39 extra Pascal-Context prompts score as background
            metric.update(prediction.numpy(), label)


def run_script(args: list[str], shared_path: Path) -> subprocess.CompletedProcess:
    # One intra-op thread: the tiny model's ops are far too small to gain from threads, and on a loaded 2-core
    # machine a second spinning thread slows them down by orders of magnitude.
    env = dict(os.environ, HF_HUB_OFFLINE="1", CATSEG_SHARED_DIR=str(shared_path), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    return result


def check_benchmark(output_dir: Path, key: str, expected: StreamingMeanIoU, stdout: str) -> None:
    """results.json, the per-class CSV and the printed table against the directly computed counts."""
    results = json.loads((output_dir / "results.json").read_text())
    entry = results["benchmarks"][key]
    bench = get_benchmark(key)
    hub, d2 = expected.compute(), expected.compute_detectron2()
    assert entry["num_images"] == LIMIT
    assert entry["num_classes"] == bench.num_classes and entry["num_scored_classes"] == bench.num_eval_labels
    assert entry["num_counted_pixels"] == expected.num_counted_pixels
    for name in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert entry[name] == pytest.approx(float(hub[name]), rel=1e-12, abs=1e-15), name
    assert entry["detectron2"]["mIoU"] == pytest.approx(d2["mIoU"], rel=1e-12)
    assert entry["settings"]["mode"] == "sliding" and entry["settings"]["test_resize"]["shortest_edge"] == 640
    assert entry["settings"]["class_aggregation_pooling"] == [1, 1]

    with open(output_dir / f"{key}_per_class.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == bench.num_eval_labels
    areas = expected.areas()
    for class_id, row in enumerate(rows):
        assert int(row["class_id"]) == class_id
        assert int(row["reference_pixels"]) == areas["area_label"][class_id]
        assert int(row["predicted_pixels"]) == areas["area_pred_label"][class_id]
        iou = hub["per_category_iou"][class_id]
        assert (row["iou"] == "") if math.isnan(iou) else float(row["iou"]) == pytest.approx(iou, rel=1e-12)
    if key == "pas20b":
        assert rows[20]["name"] == "background" and rows[0]["name"] == "aeroplane"

    # The printed table holds the numbers in percent with one decimal.
    hub_line = next(line for line in stdout.splitlines() if "mIoU (hub mean_iou)" in line)
    d2_line = next(line for line in stdout.splitlines() if "mIoU (detectron2-style)" in line)
    assert f" {100 * float(hub['mean_iou']):.1f} " in hub_line
    assert f" {d2['mIoU']:.1f} " in d2_line


def test_official_layout_end_to_end(model_dir, voc_root, shared_path, expected_counts, tmp_path) -> None:
    output_dir = tmp_path / "out"
    result = run_script(
        [
            "--model", str(model_dir), "--benchmarks", "pas20,pas20b", "--data-root", str(voc_root),
            "--limit", str(LIMIT), "--batch-size", str(BATCH_SIZE), "--device", "cpu",
            "--output-dir", str(output_dir), "--variant", "base",
        ],
        shared_path,
    )
    stdout = result.stdout
    header = next(line for line in stdout.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == [
        "A-847", "PC-459", "A-150", "PC-59", "PAS-20", "PAS-20b"
    ]
    reported = next(line for line in stdout.splitlines() if "reported by the original authors" in line)
    assert "94.6" in reported and "77.3" in reported and "12.0" in reported
    assert (output_dir / "results.md").read_text().strip() in stdout
    for key in ("pas20", "pas20b"):
        check_benchmark(output_dir, key, expected_counts(key), stdout)
    results = json.loads((output_dir / "results.json").read_text())
    assert results["model"]["variant"] == "base"
    assert results["benchmarks"]["pas20"]["reported_miou"] == 94.6
    assert results["benchmarks"]["pas20"]["data_source"]["kind"] == "layout"


def test_parquet_source_end_to_end(model_dir, voc_parquet, shared_path, expected_counts, tmp_path) -> None:
    output_dir = tmp_path / "out"
    result = run_script(
        [
            "--model", str(model_dir), "--benchmarks", "pas20", "--source", f"pas20={voc_parquet}",
            "--image-column", "pas20=img", "--label-column", "ann", "--limit", str(LIMIT),
            "--batch-size", str(BATCH_SIZE), "--device", "cpu", "--output-dir", str(output_dir),
            "--class-names-dir", str(shared_path / "benchmarks"),
        ],
        shared_path,
    )
    # A random tiny model has no known variant: no "reported" line.
    assert "reported by the original authors" not in result.stdout
    check_benchmark(output_dir, "pas20", expected_counts("pas20"), result.stdout)
    source = json.loads((output_dir / "results.json").read_text())["benchmarks"]["pas20"]["data_source"]
    assert source["kind"] == "dataset" and source["image_column"] == "img" and source["label_column"] == "ann"


def _load_script_module():
    return load_script(SCRIPT, "catseg_evaluate_script")


def test_missing_data_folder_is_one_clear_line(tmp_path, capsys) -> None:
    script = _load_script_module()
    # The data check runs before the model is loaded, so even a missing model gives the data error first.
    code = script.main(["--model", str(tmp_path / "no_model"), "--benchmarks", "a150", "--data-root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "ADEChallengeData2016" / "images" / "validation") in err
    assert "--source a150=" in err
    assert script.main(["--model", "x", "--benchmarks", "a150,nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_16bit_annotations_keep_their_values(tmp_path) -> None:
    """A-847's 16-bit TIFF annotations reach the metric with ids > 255 and the 65535 ignore value intact."""
    bench = get_benchmark("a847")
    image_dir, annotation_dir = bench.image_path(tmp_path), bench.annotation_path(tmp_path)
    image_dir.mkdir(parents=True)
    annotation_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(image_dir / "ADE_frame_0001.jpg")
    label = np.full((6, 8), 65535, dtype=np.uint16)
    label[1:3, 1:4] = 300
    label[4, :] = 846
    Image.fromarray(label).save(annotation_dir / "ADE_frame_0001.tif")
    dataset = load_benchmark_data(bench, resolve_data_source(bench, tmp_path))
    loaded = prepare_label(dataset[0]["label"])
    assert loaded.dtype == np.int64
    np.testing.assert_array_equal(loaded, label.astype(np.int64))
    metric = StreamingMeanIoU(**bench.metric_kwargs()).update(np.where(loaded == 65535, 0, loaded), loaded)
    assert metric.num_counted_pixels == 3 * 2 + 8  # the 65535 pixels are ignored
    assert metric.compute_detectron2()["mIoU"] == pytest.approx(100.0)


def test_annotation_ids_outside_the_benchmark_stop_the_run(tmp_path) -> None:
    from catseg_hf.evaluation.runner import EvaluationSetupError, check_annotation_ids

    label = np.zeros((4, 5), dtype=np.int64)
    check_annotation_ids(label, "pas20")
    label[0, 0] = 255  # PAS-20's ignore id
    check_annotation_ids(label, "pas20")
    label[1, :2] = 20  # one past the last of the 20 classes: raw ids shifted by one
    with pytest.raises(EvaluationSetupError, match=r"example 7 has label id\(s\) 20 on 2 pixel\(s\).*--reduce-labels pas20"):
        check_annotation_ids(label, "pas20", 7)
    label[2, 0] = 400
    with pytest.raises(EvaluationSetupError, match=r"20, 400 on 3 pixel\(s\)") as caught:
        check_annotation_ids(label, "pas20")
    assert "--reduce-labels" not in str(caught.value)  # 400 is no off-by-one: no hint


def test_forgotten_reduce_labels_fails_instead_of_scoring_zero(model_dir, voc_root, shared_path, tmp_path) -> None:
    """Raw-style annotations (classes 1..20, 0 = background) through a parquet source: without --reduce-labels the
    script stops with the ids it cannot score; with it, the run completes."""
    import datasets

    stems = sorted(p.stem for p in (voc_root / VOC_ANNOTATIONS).glob("*.png"))[:2]
    annotations = []
    for stem in stems:
        label = np.asarray(Image.open(voc_root / VOC_ANNOTATIONS / f"{stem}.png")).astype(np.uint8)
        raw = np.where(label == 255, 0, label + 1).astype(np.uint8)
        annotations.append(Image.fromarray(raw))
    table = {"image": [Image.open(voc_root / VOC_IMAGES / f"{s}.jpg") for s in stems], "label": annotations}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    path = tmp_path / "raw.parquet"
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))
    arguments = [
        "--model", str(model_dir), "--benchmarks", "pas20", "--source", f"pas20={path}", "--device", "cpu",
        "--mode", "whole", "--output-dir", str(tmp_path / "out"), "--class-names-dir", str(shared_path / "benchmarks"),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", CATSEG_SHARED_DIR=str(shared_path), OMP_NUM_THREADS="1")
    failed = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300
    )
    assert failed.returncode != 0
    assert "label id(s) 20" in failed.stderr and "--reduce-labels pas20" in failed.stderr, failed.stderr[-2000:]
    assert not (tmp_path / "out" / "results.json").exists()
    run_script([*arguments, "--reduce-labels", "pas20"], shared_path)
