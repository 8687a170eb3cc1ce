"""The `catseg-hf segment` command on a tiny random CAT-Seg folder (whole mode, small images, to stay fast)."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catseg_hf.cli import CommandError, expand_inputs, load_model, main, palette, parse_labels
from catseg_hf.inference import load_image
from catseg_hf.testing_utils import save_tiny_model_folder
from catseg_hf.visualization import display_image, overlay_image



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


# ---------------------------------------------------------------------------------------------------- output names
def snapshot(*folders: Path) -> dict[Path, str]:
    """sha256 of every file under the folders."""
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_outputs_never_overwrite_inputs_or_each_other(model_dir, tmp_path, capsys):
    """`x_labels.png` is an input, two inputs are named `x.png`, and --out is the first input folder: no input
    changes, every image gets its own outputs, and the command says which names it changed and why."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write_image(first / "x.png", 20, 24, seed=1)
    write_image(first / "x_labels.png", 16, 16, seed=2)  # an input that x.png's label map would overwrite
    write_image(second / "x.png", 18, 22, seed=3)
    before = snapshot(first, second)

    arguments = ("--labels", "wall,floor", "--model", str(model_dir), "--out", str(first))
    assert run_cli(str(first), str(second), *arguments) == 0

    assert {path: digest for path, digest in snapshot(first, second).items() if path in before} == before
    # first/x.png -> x-2 (x_labels.png is an input); first/x_labels.png -> x_labels; second/x.png -> x-3.
    check_outputs(first, "x-2", (24, 20), ["wall", "floor"], bits=8)
    check_outputs(first, "x_labels", (16, 16), ["wall", "floor"], bits=8)
    check_outputs(first, "x-3", (22, 18), ["wall", "floor"], bits=8)
    assert json.loads((first / "x-3.json").read_text())["image"] == str(second / "x.png")
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 2, notes
    assert "x-2_labels.png" in notes[0] and "x_labels.png is an input" in notes[0]
    assert str(second / "x.png") in notes[1] and "x-3" in notes[1]


def test_existing_outputs_are_refused_unless_overwrite(model_dir, tmp_path, capsys):
    image = write_image(tmp_path / "room.png", 16, 20, seed=6)
    out = tmp_path / "out"
    args = (str(image), "--labels", "wall,floor", "--model", str(model_dir), "--out", str(out))
    assert run_cli(*args) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()

    assert run_cli(*args) == 2
    error = capsys.readouterr().err
    assert str(out / "room_labels.png") in error and "--overwrite" in error and "3 output file(s)" in error
    assert snapshot(tmp_path) == before  # nothing written

    assert run_cli(*args, "--overwrite") == 0
    check_outputs(out, "room", (20, 16), ["wall", "floor"], bits=8)
    assert snapshot(tmp_path)[image] == before[image]


def test_out_that_is_a_file_is_refused(model_dir, tmp_path, capsys):
    image = write_image(tmp_path / "a.png", 8, 8, seed=7)
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert run_cli(str(image), "--labels", "a,b", "--model", str(model_dir), "--out", str(target)) == 2
    assert f"--out {str(target)!r} is a file" in capsys.readouterr().err
    assert target.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------------- 16-bit images
def test_sixteen_bit_png_is_not_clipped_to_white(model_dir, tmp_path):
    """A 16-bit grayscale PNG is segmented and drawn as the processor reads it (values / 257), not clipped at 255."""
    ramp = np.linspace(4000, 60000, 24 * 32).reshape(24, 32).astype(np.uint16)
    path = tmp_path / "scan.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    out = tmp_path / "out"
    labels = ["dark", "light", "middle"]
    assert run_cli(str(path), "--labels", ",".join(labels), "--model", str(model_dir), "--out", str(out)) == 0
    label_map = check_outputs(out, "scan", (32, 24), labels, bits=8)

    # The label map is the one of the same pixels given as floats on the 0-255 scale (the processor's 16-bit rule).
    model, processor = load_model(str(model_dir))
    as_floats = ramp.astype(np.float32) / np.float32(257.0)
    inputs = processor(images=as_floats, text=labels, mode="whole", return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(24, 32)], image_sizes=[(24, 32)])
    np.testing.assert_array_equal(label_map, expected[0].numpy())

    # The overlay shows the image (a gray ramp under the tint), not white.
    shown = np.asarray(display_image(load_image(path)))
    assert shown.mean() < 200 and shown[0, 0, 0] < 30
    overlay = np.asarray(Image.open(out / "scan_overlay.png"))[:24, :32]
    np.testing.assert_array_equal(overlay, np.asarray(overlay_image(load_image(path), label_map, len(labels))))


# ---------------------------------------------------------------------------------------------------- start-up
def cli_command() -> list[str]:
    """The installed console script of this environment (else `python -m catseg_hf_cli`)."""
    script = Path(sys.executable).parent / "catseg-hf"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "catseg_hf_cli"]


def test_help_answers_without_loading_torch():
    """`catseg-hf --help` parses before importing torch/transformers (it took 7-13 s when the parser came after)."""
    probe = (
        "import sys, catseg_hf_cli\n"
        "catseg_hf_cli.build_parser().format_help()\n"
        "heavy = sorted(name for name in ('torch', 'transformers', 'catseg_hf', 'gradio') if name in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
    for arguments in (["--help"], ["segment", "--help"], ["demo", "--help"]):
        start = time.perf_counter()
        done = subprocess.run(cli_command() + arguments, capture_output=True, text=True, timeout=60)
        seconds = time.perf_counter() - start
        assert done.returncode == 0 and "usage: catseg-hf" in done.stdout, done.stderr
        assert seconds < 5.0, f"catseg-hf {' '.join(arguments)} took {seconds:.1f} s"  # ~0.1 s measured


def test_bad_arguments_fail_before_loading_torch(tmp_path):
    done = subprocess.run(cli_command() + ["demo", "--port", "70000"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "'70000' is not a port number" in done.stderr


# ---------------------------------------------------------------------------------------------------- models
def test_missing_model_names_the_folder_and_the_hub(tmp_path, monkeypatch):
    """A name that is neither a local folder nor reachable on the Hub: the message says both, quickly offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(CommandError) as error:
        load_model("no-such-model")
    assert time.perf_counter() - start < 10.0
    message = str(error.value)
    assert "'no-such-model'" in message and "no local folder of that name exists" in message
    assert str(tmp_path) in message and "Hub lookup failed" in message and "HF_HUB_OFFLINE=1" in message

    with pytest.raises(CommandError, match="'./models/catseg' does not exist"):
        load_model("./models/catseg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CommandError, match="'empty' has no config.json"):
        load_model("empty")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(CommandError, match="'weights.bin' is a file"):
        load_model("weights.bin")


def test_missing_model_through_the_command(tmp_path):
    """The same through the installed command under HF_HUB_OFFLINE=1: exit code 2, one line naming both places."""
    image = write_image(tmp_path / "a.png", 8, 8, seed=8)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = cli_command() + ["segment", str(image), "--labels", "a,b", "--model", "no-such-model"]
    start = time.perf_counter()
    done = subprocess.run(
        command + ["--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("catseg-hf: error:")]
    assert len(errors) == 1 and "'no-such-model'" in errors[0], done.stderr
    assert "no local folder of that name exists" in errors[0] and "Hub lookup failed" in errors[0]
    assert seconds < 10.0, f"{seconds:.1f} s"  # found before torch loads (~1 s); online, the Hub retries take 30 s
    assert not (tmp_path / "out").exists()
