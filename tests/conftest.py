"""Shared pytest fixtures: the read-only `../shared` data, tiny configurations, offline hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("CATSEG_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_path() -> Path:
    path = shared_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set CATSEG_SHARED_DIR)")
    return path


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
