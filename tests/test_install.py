"""A non-editable install stands on its own: `pip install .` into a fresh virtual environment, then run from another
directory (so that nothing is found through the checkout): the `catseg-hf` command on the tiny example model,
`scripts/evaluate.py --help`, and a benchmark's class names from the package data.

Kept cheap for the suite: the fresh venv has no pip and no dependencies of its own (`pip --python` installs into it
with `--no-deps --no-index --no-build-isolation`, offline), and sees the test environment's packages (torch,
transformers, setuptools, ...) through a `.pth` line, behind its own site-packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from PIL import Image

from catseg_hf.data.synthetic import render_scene


REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_MODEL = REPO_ROOT / "examples" / "tiny-shapes-catseg"


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.timeout(300)
def test_non_editable_install_runs_from_anywhere(tmp_path):
    # The sources as a fresh clone has them (no build artefacts, no editable metadata).
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))

    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(environment)
    python = environment / "bin" / "python"
    site_packages = Path(
        subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True)
        .strip()
    )
    # The test environment's packages, searched after the fresh venv's own (its .pth files are not run, so its
    # editable catseg-hf stays out of sight).
    (site_packages / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "CATSEG_SHARED_DIR")}
    env.update(HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", str(source)],
        cwd=tmp_path,
        env=env,
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The package, its class-name files and its demo examples come from the fresh venv; the core never imports gradio.
    probe = (
        "import json, sys\n"
        "from importlib.resources import files\n"
        "import catseg_hf, catseg_hf.cli, catseg_hf_cli\n"
        "from catseg_hf.evaluation import default_class_names_dir, load_class_names\n"
        "print(json.dumps({'package': catseg_hf.__file__, 'cli': catseg_hf_cli.__file__,\n"
        "    'class_names_dir': str(default_class_names_dir()), 'a847': len(load_class_names('a847')),\n"
        "    'a150_bed': 'bed ' in load_class_names('ADE-150'),\n"
        "    'examples': sorted(p.name for p in (files('catseg_hf') / 'demo' / 'examples').iterdir()),\n"
        "    'gradio_imported': 'gradio' in sys.modules}))\n"
    )
    found = json.loads(run([str(python), "-c", probe], cwd=elsewhere, env=env).stdout.strip().splitlines()[-1])
    for key in ("package", "cli", "class_names_dir"):
        assert Path(found[key]).is_relative_to(site_packages), (key, found[key])
    assert found["a847"] == 847 and found["a150_bed"]
    assert len(found["examples"]) == 4 and not found["gradio_imported"]

    # The command, on the tiny example model of the checkout, writing into the current directory.
    render_scene(3, size=96)[0].save(elsewhere / "shapes.png")
    script = environment / "bin" / "catseg-hf"
    run([str(script), "--help"], cwd=elsewhere, env=env)
    done = run(
        [str(script), "segment", "shapes.png", "--model", str(EXAMPLE_MODEL), "--mode", "whole", "--out", "out"],
        cwd=elsewhere,
        env=env,
    )
    assert "Segmented 1 of 1 image(s)" in done.stdout
    with Image.open(elsewhere / "out" / "shapes_labels.png") as label_map:
        assert label_map.size == (96, 96)
    assert json.loads((elsewhere / "out" / "shapes.json").read_text())["labels"][0] == "background"

    help_text = run([str(python), str(REPO_ROOT / "scripts" / "evaluate.py"), "--help"], cwd=elsewhere, env=env).stdout
    assert "--benchmarks" in help_text


def test_packaged_class_names_are_the_shared_copies(shared_path):
    """The package ships the benchmark class-name files byte for byte as `shared/benchmarks` holds them."""
    from catseg_hf.evaluation.benchmarks import BENCHMARKS, PACKAGED_CLASS_NAMES_DIR

    files = sorted({bench.class_names_file for bench in BENCHMARKS.values()})
    assert sorted(path.name for path in PACKAGED_CLASS_NAMES_DIR.glob("*.json")) == files
    for name in files:
        assert (PACKAGED_CLASS_NAMES_DIR / name).read_bytes() == (shared_path / "benchmarks" / name).read_bytes(), name
