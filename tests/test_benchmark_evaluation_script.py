"""Smoke test of scripts/benchmark_evaluation.py in --quick mode: evaluate.py with and without DataLoader workers on a
synthetic ADE-150 in the official folder layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from catseg_hf.testing_utils import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "benchmark_evaluation.py"


def test_synthetic_benchmark_is_in_the_official_layout(tmp_path):
    script = load_script(SCRIPT, "catseg_benchmark_evaluation_script")
    root = script.write_benchmark(tmp_path, 2, (30, 44))
    images = sorted((root / script.IMAGES_DIR).iterdir())
    annotations = sorted((root / script.ANNOTATIONS_DIR).iterdir())
    assert [p.stem for p in images] == [p.stem for p in annotations] == ["ADE_val_00000001", "ADE_val_00000002"]
    label = np.array(Image.open(annotations[0]))
    assert label.shape == (30, 44) and label.dtype == np.uint8
    assert set(np.unique(label)) <= set(range(150)) | {255} and (label == 255).any()


def test_quick_run_reports_images_per_second_for_each_worker_count(tmp_path, shared_path):
    output = tmp_path / "results.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", CATSEG_SHARED_DIR=str(shared_path))
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--images", "2", "--workers", "0,1", "--json", str(output)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = json.loads(output.read_text())["runs"]
    assert [run["num_workers"] for run in runs] == [0, 1]
    for run in runs:
        assert run["num_images"] == 2 and run["images_per_second"] > 0
    assert runs[0]["num_counted_pixels"] == runs[1]["num_counted_pixels"] > 0
    assert "--num-workers 1 vs 0:" in completed.stdout


def test_bad_worker_list_is_a_usage_error(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--workers", "two"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert completed.returncode == 2 and "--workers must be comma-separated integers" in completed.stderr
