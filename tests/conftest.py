"""Shared pytest fixtures: the read-only `../shared` data, tiny configurations, offline hub."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("CATSEG_SHARED_DIR", REPO_ROOT.parent / "shared"))


# The official-code fixtures every parity test runs on: the tiny model (12 classes) and the top-k one (280 classes >
# pad_len, ignore pixels in the training targets, an input whose padding differs between multiples of 16 and 32).
OFFICIAL_FIXTURES = ("official_tiny", "official_tiny_topk")


@pytest.fixture(scope="session")
def shared_path() -> Path:
    path = shared_dir()
    if not path.is_dir():
        message = f"shared data folder {path} not found (set CATSEG_SHARED_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; under CI=true the official fixtures are required")
        pytest.skip(message)
    return path


@dataclass(frozen=True)
class OfficialFixture:
    """One official-code fixture: its folder, tensors, class names and the converted model (eval mode)."""

    name: str
    directory: Path
    io: dict
    class_names: list
    model: object

    @property
    def images(self) -> list[str]:
        """The fixture's test images (`img0`, `img1`, ...)."""
        return sorted(key[: -len(".image")] for key in self.io if key.endswith(".image") and key.startswith("img"))


@functools.lru_cache(maxsize=None)
def _load_official_fixture(directory: str) -> OfficialFixture:
    from safetensors.torch import load_file

    from catseg_hf.conversion import convert_official_checkpoint

    folder = Path(directory)
    model = convert_official_checkpoint(folder / "checkpoint.pth", official_config=folder / "config.json")
    return OfficialFixture(
        name=folder.name,
        directory=folder,
        io=load_file(str(folder / "io.safetensors")),
        class_names=json.loads((folder / "classes.json").read_text()),
        model=model,
    )


@pytest.fixture(scope="session", params=OFFICIAL_FIXTURES)
def official(request, shared_path: Path) -> OfficialFixture:
    """Each official fixture in turn (tests using it run once per fixture)."""
    return _load_official_fixture(str(shared_path / "fixtures" / request.param))


@pytest.fixture(scope="session")
def official_tiny_dir(shared_path: Path) -> Path:
    return shared_path / "fixtures" / "official_tiny"


@pytest.fixture(scope="session")
def official_io(official_tiny_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(official_tiny_dir / "io.safetensors"))


@pytest.fixture(scope="session")
def converted_official_tiny(official_tiny_dir: Path):
    """The official tiny checkpoint converted with its official config (eval mode)."""
    from catseg_hf.conversion import convert_official_checkpoint

    return convert_official_checkpoint(
        official_tiny_dir / "checkpoint.pth", official_config=official_tiny_dir / "config.json"
    )


@pytest.fixture(scope="session")
def bpe_path(shared_path: Path) -> Path:
    return shared_path / "fixtures" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"


def pytest_configure(config):
    # Marks that transformers' common test mixins (loaded by tests/transformers_common.py) put on their tests.
    for mark in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "torch_compile_test"):
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' own common tests")
