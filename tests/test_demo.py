"""The web demo's logic without a browser (tests/test_demo_browser.py drives the page itself): results equal to the
pipeline's, class embeddings reused, every bad input answered with a message, presets, the `demo` command and the
Space folder."""

from __future__ import annotations

import ast
import json
import os
import runpy
import socket
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg_hf.cli import main
from catseg_hf.data.synthetic import render_scene, synthetic_class_names
from catseg_hf.evaluation import get_benchmark
from catseg_hf.testing_utils import save_tiny_model_folder


REPO_ROOT = Path(__file__).resolve().parents[1]
SPACE_DIR = REPO_ROOT / "spaces" / "catseg"


def _require_gradio():
    try:
        import gradio  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("gradio is not installed; under CI=true the demo tests must run (pip install -e '.[dev]')")
        pytest.skip("gradio is not installed (pip install -e '.[demo]')")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bpe_path):
    return save_tiny_model_folder(tmp_path_factory.mktemp("catseg-demo"), bpe_path, mode="whole")


@pytest.fixture(scope="module")
def page(model_dir, tmp_path_factory):
    _require_gradio()
    from catseg_hf.demo import build_demo

    return build_demo(str(model_dir), model_name="tiny-random", output_dir=tmp_path_factory.mktemp("downloads"))


@pytest.fixture(scope="module")
def demo(page):
    return page.segmentation_demo


@pytest.fixture(scope="module")
def segmenter(model_dir):
    from transformers import pipeline

    return pipeline("zero-shot-image-segmentation", model=str(model_dir))


def no_progress(*args, **kwargs):
    return None


def scene(path: Path, seed: int = 0, size=(48, 64)) -> Path:
    render_scene(seed, size=size)[0].save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares `width` x `height` pixels (1-bit gray) but holds only one row of data: enough for any
    size check, and nothing to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (width + 7) // 8)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b"")
    )
    return path


def pipeline_label_map(segmenter, image, labels, mode="whole") -> np.ndarray:
    segments = segmenter(str(image), candidate_labels=labels, mode=mode)
    label_map = np.zeros(np.asarray(segments[0]["mask"]).shape, dtype=np.int64)
    for segment in segments:
        label_map[np.asarray(segment["mask"]) > 0] = labels.index(segment["label"])
    return label_map


# ---------------------------------------------------------------------------------------------------- results
def test_core_package_never_imports_gradio():
    """Only catseg_hf.demo imports gradio (tests/test_install.py checks it at run time too, in its fresh venv)."""
    package = REPO_ROOT / "src" / "catseg_hf"
    offenders = []
    for path in package.rglob("*.py"):
        if package / "demo" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name == "gradio" or name.startswith("gradio.") for name in names):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_result_equals_the_pipeline_and_is_offered_for_download(demo, segmenter, tmp_path):
    """(Whole mode here; the browser test compares a sliding-mode request too.)"""
    mode = "whole"
    image = scene(tmp_path / "room 1.png", seed=3)
    labels = ["wall", "floor", "sofa, couch"]
    result = demo.segment(str(image), "wall\n  floor \n\nsofa, couch\n", mode)
    expected = pipeline_label_map(segmenter, image, labels, mode)
    np.testing.assert_array_equal(result.label_map, expected)
    assert result.labels == labels
    np.testing.assert_array_equal(np.asarray(Image.open(result.label_map_path)), expected)
    assert result.label_map_path.name == "room_1_labels.png" and result.record_path.name == "room_1.json"
    record = json.loads(result.record_path.read_text(encoding="utf-8"))
    assert record["labels"] == labels and record["mode"] == mode and record["image_size"] == [48, 64]
    assert record["label_map"] == "room_1_labels.png"
    assert sum(record["fractions"].values()) == pytest.approx(1.0)


def test_class_embeddings_are_computed_once_per_vocabulary(demo, tmp_path, monkeypatch):
    image = str(scene(tmp_path / "a.png", seed=4))
    calls = []
    original = demo.model.get_class_embeddings

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(demo.model, "get_class_embeddings", counting)
    first = demo.segment(image, "sky\nsea\nsand", "whole")
    second = demo.segment(image, "sky\nsea\nsand", "whole")
    assert len(calls) == 1 and not first.embeddings_reused and second.embeddings_reused
    demo.segment(image, "sky\nsea", "whole")
    assert len(calls) == 2


def test_page_outputs(demo, tmp_path):
    from catseg_hf.visualization import colour_hex, palette

    image = str(scene(tmp_path / "b.png", seed=5))
    annotated, overlay, rows, files, status = demo.run(image, "wall\nfloor\nlamp", "whole", progress=no_progress)
    assert status.startswith("**Done**") and "classes present" in status
    base, annotations = annotated.value["image"], annotated.value["annotations"]
    assert base is not None and annotations
    names = [row[1] for row in rows]
    assert sorted(names) == sorted(annotation["label"] for annotation in annotations)
    assert [row[2] for row in rows] == sorted((row[2] for row in rows), reverse=True)  # by pixel share
    colours = palette(3)
    assert annotated.color_map == {row[1]: colour_hex(colours[row[0]]) for row in rows}  # the overlay's colours
    assert overlay.width >= 64 and overlay.height > 48  # the image, and the legend below it
    assert [Path(file).suffix for file in files] == [".png", ".json"]


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def bad_inputs(tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    return {
        "no image": (None, "wall", "Add an image first"),
        "no labels": (str(scene(tmp_path / "c.png")), " \n\n  ", "Type at least one class name"),
        "5000 labels": (str(scene(tmp_path / "d.png")), "\n".join(map(str, range(5000))), "5000 class names"),
        "unreadable file": (str(text_file), "wall", "Cannot read 'notes.png' as an image"),
        "huge image": (str(png_header_only(tmp_path / "huge.png", 5000, 5000)), "wall", "'huge.png' is 5000x5000"),
        "decompression bomb": (
            str(png_header_only(tmp_path / "bomb.png", 20000, 20000)), "wall", "'bomb.png' is too large"
        ),
        "duplicate labels": (str(scene(tmp_path / "e.png")), "cat\ndog\ncat", "cat"),
        "unknown mode": (str(scene(tmp_path / "f.png")), "wall", "Unknown mode 'tiles'"),
    }


@pytest.mark.parametrize(
    "case",
    ["no image", "no labels", "5000 labels", "unreadable file", "huge image", "decompression bomb", "duplicate labels",
     "unknown mode"],
)
def test_bad_input_gets_a_message_in_the_page(demo, bad_inputs, case, tmp_path):
    image, names, expected = bad_inputs[case]
    mode = "tiles" if case == "unknown mode" else "whole"
    with pytest.warns(UserWarning):  # gr.Warning outside a request: a Python warning instead of the page's notice
        outputs = demo.run(image, names, mode, progress=no_progress)
    *results, status = outputs
    assert results == [None, None, None, None]
    assert status.startswith("**Error:**") and expected in status, status
    assert "Traceback" not in status
    # ... and the next request is served.
    assert demo.run(str(scene(tmp_path / "ok.png")), "wall\nfloor", "whole", progress=no_progress)[-1].startswith(
        "**Done**"
    )


def test_unexpected_failure_is_a_message_not_a_crash(demo, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(demo.processor, "post_process_semantic_segmentation", broken)
    with pytest.warns(UserWarning):
        status = demo.run(str(scene(tmp_path / "g.png")), "wall", "whole", progress=no_progress)[-1]
    assert status == "**Error:** Something went wrong (RuntimeError: the model broke)."


def test_sixteen_bit_upload(demo, tmp_path):
    from catseg_hf.visualization import display_image

    path = tmp_path / "scan.png"
    Image.fromarray(np.linspace(1000, 64000, 48 * 64).reshape(48, 64).astype(np.uint16)).save(path)
    result = demo.segment(str(path), "dark\nlight", "whole")
    assert result.label_map.shape == (48, 64)
    assert np.asarray(display_image(result.image)).mean() < 200  # shown as a gray ramp, not white


# ---------------------------------------------------------------------------------------------------- page content
def test_presets_are_the_benchmark_vocabularies(demo):
    from catseg_hf.demo import MODEL_VOCABULARY, PRESETS

    assert list(PRESETS) == ["ADE-150", "ADE-847", "Pascal-Context 59", "Pascal-Context 459", "VOC-20", "COCO-Stuff"]
    for preset, key in PRESETS.items():
        names = demo.preset_class_names(preset)
        assert len(names) == get_benchmark(key).num_classes, preset
        assert len(names) <= demo.max_classes
    assert demo.preset_class_names(MODEL_VOCABULARY) == demo.default_class_names()


def test_examples_are_shipped_and_use_classes_the_tiny_model_knows():
    _require_gradio()
    from catseg_hf.demo import EXAMPLES, EXAMPLES_DIR

    known = set(synthetic_class_names())
    for file, names in EXAMPLES:
        with Image.open(EXAMPLES_DIR / file) as image:
            assert image.mode == "RGB" and image.size == (160, 160)
        assert set(names) <= known


def test_unseen_example_is_labelled_right_by_the_tiny_model(tmp_path):
    """The last example shows two combinations the tiny model never segmented in training; the demo (default model,
    the example's own class names, whole mode) labels both."""
    _require_gradio()
    from catseg_hf.data.synthetic import CLASS_NAMES, HELDOUT_COMBOS
    from catseg_hf.demo import EXAMPLES, EXAMPLES_DIR, UNSEEN_EXAMPLE, build_demo

    file, names = EXAMPLES[-1]
    assert file == UNSEEN_EXAMPLE
    image, truth = render_scene(15, 160, combos=HELDOUT_COMBOS, min_shapes=2, max_shapes=2)
    with Image.open(EXAMPLES_DIR / file) as shipped:
        assert np.array_equal(np.asarray(shipped), np.asarray(image)), "the example is not the scene it documents"
    truth = np.asarray(truth)
    unseen = {f"{color} {shape}" for color, shape in HELDOUT_COMBOS}
    shown = [CLASS_NAMES[index] for index in np.unique(truth) if index]
    assert len(shown) == 2 and set(shown) <= unseen and set(shown) <= set(names)
    demo = build_demo(output_dir=tmp_path).segmentation_demo
    result = demo.segment(str(EXAMPLES_DIR / file), "\n".join(names), "whole")
    for name in shown:
        predicted, expected = result.label_map == result.labels.index(name), truth == CLASS_NAMES.index(name)
        # Measured with the shipped model: IoU 0.86 (red triangle) and 0.75 (green cross).
        assert (predicted & expected).sum() / (predicted | expected).sum() >= 0.6, name


def test_default_model_is_the_tiny_example_and_the_page_says_so():
    _require_gradio()
    from catseg_hf.demo import build_demo, default_model_path

    assert default_model_path() == REPO_ROOT / "examples" / "tiny-shapes-catseg"
    demo = build_demo().segmentation_demo
    description = demo.model_description()
    assert demo.is_example_model and "tiny-shapes-catseg" in description and "official" in description
    assert demo.default_class_names() == synthetic_class_names()


# ---------------------------------------------------------------------------------------------------- the command
def test_demo_command_serves_the_page(model_dir, monkeypatch):
    _require_gradio()
    import catseg_hf.demo

    served = {}

    def fake_launch(page, host, port, **kwargs):
        served.update(page=page, host=host, port=port)

    monkeypatch.setattr(catseg_hf.demo, "launch", fake_launch)
    assert main(["demo", "--model", str(model_dir), "--port", "7999", "--device", "cpu"]) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 7999
    assert not served["page"].segmentation_demo.is_example_model
    assert main(["demo"]) == 0  # no --model: the tiny example model
    assert served["page"].segmentation_demo.is_example_model and served["port"] == 7860


def test_demo_command_on_a_busy_port(model_dir, capsys):
    _require_gradio()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--model", str(model_dir), "--port", str(port), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in error


def test_demo_command_without_gradio(model_dir, monkeypatch, capsys):
    import catseg_hf

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    monkeypatch.delitem(sys.modules, "catseg_hf.demo", raising=False)
    monkeypatch.delattr(catseg_hf, "demo", raising=False)
    assert main(["demo", "--model", str(model_dir)]) == 2
    assert "pip install 'catseg-hf[demo]'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- the Space
def test_space_folder_runs_the_same_app(model_dir, monkeypatch):
    _require_gradio()
    import gradio as gr
    import yaml

    readme = (SPACE_DIR / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("---\n")
    metadata = yaml.safe_load(readme.split("---\n")[1])
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py"
    assert str(metadata["sdk_version"]).split(".")[0] == gr.__version__.split(".")[0]
    requirements = (SPACE_DIR / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("catseg-hf[demo]") for line in requirements)

    monkeypatch.setenv("CATSEG_MODEL", str(model_dir))
    namespace = runpy.run_path(str(SPACE_DIR / "app.py"), run_name="space_app")  # not __main__: built, not served
    page = namespace["demo"]
    assert isinstance(page, gr.Blocks) and page.segmentation_demo.model_name == str(model_dir)
