"""The `catseg-hf segment` command on a tiny random CAT-Seg folder (whole mode, small images, to stay fast)."""

from __future__ import annotations

import json
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from catseg_hf.cli import expand_inputs, main, palette, parse_labels
from catseg_hf.testing_utils import save_tiny_model_folder



def write_image(path: Path, height: int, width: int, seed: int) -> Path:
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bpe_path):
    return save_tiny_model_folder(tmp_path_factory.mktemp("catseg-tiny"), bpe_path)


def run_cli(*args: str) -> int:
    return main(["segment", *args, "--mode", "whole", "--device", "cpu"])


def check_outputs(out: Path, name: str, image_size: tuple[int, int], labels: list[str], bits: int) -> np.ndarray:
    """The three files of one image; returns the label map."""
    label_image = Image.open(out / f"{name}_labels.png")
    label_map = np.asarray(label_image)
    assert label_image.size == image_size
    assert label_map.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert label_map.max() < len(labels)

    overlay = Image.open(out / f"{name}_overlay.png")
    assert overlay.mode == "RGB"
    assert overlay.width >= image_size[0] and overlay.height > image_size[1]  # the legend is drawn below the image

    record = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    assert record["labels"] == labels and record["mode"] == "whole"
    assert record["image_size"] == [image_size[1], image_size[0]]
    assert record["label_map"] == f"{name}_labels.png" and record["overlay"] == f"{name}_overlay.png"
    ids, counts = np.unique(label_map, return_counts=True)
    expected = {labels[i]: c / label_map.size for i, c in zip(ids.tolist(), counts.tolist())}
    assert list(record["fractions"]) == list(expected)  # only the classes present, in class order
    assert record["fractions"] == pytest.approx(expected)
    return label_map


def test_segment_two_images_from_a_directory(model_dir, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    write_image(images / "b_room.png", 40, 30, seed=2)
    write_image(images / "a_room.jpg", 48, 64, seed=1)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    labels = ["wall", "floor", "sofa", "lamp"]

    assert expand_inputs([images])[0] == [images / "a_room.jpg", images / "b_room.png"]
    exit_code = run_cli(str(images), "--labels", " wall, floor,sofa ,lamp", "--model", str(model_dir), "--out", str(out))
    assert exit_code == 0
    check_outputs(out, "a_room", (64, 48), labels, bits=8)
    check_outputs(out, "b_room", (30, 40), labels, bits=8)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{suffix}" for stem in ("a_room", "b_room") for suffix in ("_labels.png", "_overlay.png", ".json")
    )


def test_more_than_255_classes_give_a_16_bit_label_map(model_dir, tmp_path):
    labels = [f"class {i}" for i in range(300)]
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(labels))
    image = write_image(tmp_path / "wide.png", 24, 32, seed=3)
    out = tmp_path / "out"
    assert run_cli(str(image), "--labels-file", str(labels_file), "--model", str(model_dir), "--out", str(out)) == 0
    check_outputs(out, "wide", (32, 24), labels, bits=16)


def test_unreadable_file_is_reported_and_the_rest_goes_on(model_dir, tmp_path, monkeypatch, capsys):
    """Run as `python -m catseg_hf.cli` (in this process, to save the start-up time): one error line, exit code 1,
    and the other image still gets its files."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    good = write_image(tmp_path / "good.png", 20, 28, seed=4)
    out = tmp_path / "out"
    argv = ["catseg-hf", "segment", str(broken), str(good), "--labels", "wall,floor", "--model", str(model_dir)]
    monkeypatch.setattr(sys, "argv", argv + ["--out", str(out), "--mode", "whole", "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
        # runpy warns that catseg_hf.cli is already imported (by this test module); running it again is harmless.
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module("catseg_hf.cli", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, errors
    assert errors[0].startswith("catseg-hf: error: ") and "broken.jpg" in errors[0]
    check_outputs(out, "good", (28, 20), ["wall", "floor"], bits=8)
    assert not list(out.glob("broken*"))


def test_labels_arguments(tmp_path):
    assert parse_labels("cat, dog,,sky ", None) == ["cat", "dog", "sky"]
    lines = tmp_path / "labels.txt"
    lines.write_text("wall\n\nsofa, couch\n  lamp  \n", encoding="utf-8")
    assert parse_labels(None, lines) == ["wall", "sofa, couch", "lamp"]  # synonyms need a file
    listed = tmp_path / "labels.json"
    listed.write_text('["wall", "sofa, couch"]', encoding="utf-8")
    assert parse_labels(None, listed) == ["wall", "sofa, couch"]
    assert parse_labels(None, None) is None


def test_command_errors_are_one_line(model_dir, tmp_path, capsys):
    image = write_image(tmp_path / "x.png", 8, 8, seed=5)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('["wall", 3]')
    assert run_cli(str(image), "--labels-file", str(bad_json), "--model", str(model_dir), "--out", str(tmp_path)) == 2
    assert run_cli(str(image), "--labels", "a,b", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)) == 2
    assert run_cli(str(image), "--labels", "a,a", "--model", str(model_dir), "--out", str(tmp_path)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(lines) == 3 and all(line.startswith("catseg-hf: error: ") for line in lines), lines
    assert "list of strings" in lines[0] and "does not exist" in lines[1] and "Duplicate" in lines[2]
    assert not list(tmp_path.glob("x_*"))


def test_palette_is_deterministic_and_distinct():
    colours = palette(300)
    assert colours.dtype == np.uint8 and colours.shape == (300, 3)
    np.testing.assert_array_equal(colours, palette(300))
    assert len({tuple(c) for c in colours.tolist()}) == 300
