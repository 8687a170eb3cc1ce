"""The README's "## Inference" examples run as written.

The examples use a converted folder `catseg-base` and an image `room.jpg` in the current directory; this test makes
both (a tiny random model, a random image) in a temporary directory, runs every ```python block there, and every
`catseg-hf ...` command of the ```bash blocks through the CLI's `main`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg_hf.cli import main as cli_main
from catseg_hf.testing_utils import save_tiny_model_folder

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION_TITLE = "## Inference"


def inference_section() -> str | None:
    """The text of the README's "## Inference" section (up to the next "## " heading), or None."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(SECTION_TITLE)}[ \t]*\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    return match.group(1) if match else None


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a bash block: backslash continuations joined, comments and blank lines skipped."""
    joined = re.sub(r"\\\n", " ", block)
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def section() -> str:
    found = inference_section()
    if found is None:
        pytest.skip(f"README.md has no {SECTION_TITLE!r} section yet (the examples to test live there).")
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, bpe_path) -> Path:
    """A directory holding `catseg-base` (tiny random model) and `room.jpg`, as the examples expect."""
    folder = tmp_path_factory.mktemp("readme")
    # Whole mode: one view per image, so the examples run as written, only faster.
    save_tiny_model_folder(folder / "catseg-base", bpe_path, mode="whole")
    pixels = np.random.RandomState(0).randint(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "room.jpg")
    return folder


def test_python_examples(section, workdir, monkeypatch):
    blocks = code_blocks(section, "python")
    assert blocks, f"the README's {SECTION_TITLE!r} section has no ```python example"
    monkeypatch.chdir(workdir)
    for index, block in enumerate(blocks):
        exec(compile(block, f"README.md {SECTION_TITLE} python block {index}", "exec"), {"__name__": "__main__"})


def test_cli_examples(section, workdir, monkeypatch):
    commands = [command for block in code_blocks(section, "bash") for command in shell_commands(block)]
    assert commands, f"the README's {SECTION_TITLE!r} section has no ```bash example"
    monkeypatch.chdir(workdir)
    for command in commands:
        if command[:1] == ["catseg-hf"]:
            arguments = command[1:]
        elif command[:3] == ["python", "-m", "catseg_hf.cli"]:
            arguments = command[3:]
        else:
            pytest.fail(f"README {SECTION_TITLE} runs a command this test cannot check: {shlex.join(command)}")
        assert cli_main(arguments) == 0, shlex.join(command)
        out = workdir / arguments[arguments.index("--out") + 1]
        for name in ("room_labels.png", "room_overlay.png", "room.json"):
            assert (out / name).is_file(), f"{shlex.join(command)} did not write {name}"


# ----------------------------------------------------------------------------------- the tiny demo model's section
TINY_MODEL_TITLE = "### The tiny demo model"
REPO_ROOT = README.parent


def tiny_model_section() -> str:
    """The README's "### The tiny demo model..." subsection (up to the next heading of level 2 or 3)."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(TINY_MODEL_TITLE)}[^\n]*\n(.*?)(?=^##+ |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no {TINY_MODEL_TITLE!r} subsection"
    return match.group(1)


def test_tiny_model_examples_label_an_unseen_combination(tmp_path, monkeypatch):
    """The section's Python example, run as written with the shipped model, labels the two held-out combinations of
    its scene (IoU >= 0.6 each), and its commands run through the CLI."""
    section = tiny_model_section()
    (block,) = code_blocks(section, "python")
    monkeypatch.chdir(REPO_ROOT)
    namespace = {"__name__": "__main__"}
    exec(compile(block, f"README.md {TINY_MODEL_TITLE} python block", "exec"), namespace)
    label_map, truth, names = namespace["label_map"], np.asarray(namespace["truth"]), namespace["names"]
    from catseg_hf.data.synthetic import CLASS_NAMES

    for name in ("red triangle", "green cross"):
        predicted, expected = label_map == names.index(name), truth == CLASS_NAMES.index(name)
        assert expected.any() and (predicted & expected).sum() / (predicted | expected).sum() >= 0.6, name

    monkeypatch.chdir(tmp_path)
    for command in [command for block in code_blocks(section, "bash") for command in shell_commands(block)]:
        if command[:2] == ["python", "-c"]:
            exec(command[2], {"__name__": "__main__"})
        else:
            assert command[0] == "catseg-hf", shlex.join(command)
            arguments = [str(REPO_ROOT / a) if a.startswith("examples/") else a for a in command[1:]]
            assert cli_main(arguments) == 0, shlex.join(command)
    assert (tmp_path / "demo" / "unseen_overlay.png").is_file()
