"""Small configurations and paths shared by the test-suite, the examples and the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .configuration_catseg import CATSegConfig


def tiny_clip_config_dict(vocab_size: int = 49408, image_size: int = 32, patch_size: int = 16) -> dict[str, Any]:
    """A CLIP of a few thousand parameters (plus the token table) with OpenAI's vocabulary and special ids."""
    return {
        "projection_dim": 16,
        "text_config": {
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "projection_dim": 16,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 0,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "patch_size": patch_size,
            "image_size": image_size,
            "hidden_act": "quick_gelu",
            "projection_dim": 16,
        },
    }


def tiny_catseg_config(**overrides: Any) -> CATSegConfig:
    """A random-weight-sized CAT-Seg: 64 px CLIP input (4x4 patch grid, Swin windows of 2 so the shifted block is
    exercised), two guidance taps, pad_len 8 so that the top-k class selection is reachable with few classes."""
    values: dict[str, Any] = dict(
        clip_config=tiny_clip_config_dict(),
        clip_resolution=64,
        guidance_layer_indices=[1, 2],
        decoder_guidance_dims=[32, 16],
        decoder_guidance_proj_dims=[16, 16],
        decoder_dims=[32, 16],
        hidden_dim=32,
        appearance_guidance_proj_dim=16,
        text_guidance_proj_dim=16,
        num_aggregation_layers=2,
        num_attention_heads=2,
        window_size=2,
        pad_len=8,
    )
    values.update(overrides)
    return CATSegConfig(**values)


def shared_dir() -> Path:
    """The read-only `shared` data folder: `$CATSEG_SHARED_DIR`, else `../shared` beside the repository."""
    env = os.environ.get("CATSEG_SHARED_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared"


def save_tiny_model_folder(
    folder: str | Path, bpe_path: str | Path, seed: int = 0, config_overrides: dict | None = None, **processor_kwargs: Any
) -> Path:
    """A complete random tiny CAT-Seg folder as the converter writes it: model, modelling code, processor and CLIP
    tokenizer (built from `bpe_path`). `processor_kwargs` go to the image processor (e.g. `mode="whole"`)."""
    import torch

    from .modeling_catseg import CATSegForSemanticSegmentation
    from .processing_catseg import CATSegProcessor

    torch.manual_seed(seed)
    model = CATSegForSemanticSegmentation(tiny_catseg_config(**(config_overrides or {}))).eval()
    model.save_pretrained(folder)
    CATSegProcessor.from_model_config(model.config, bpe_path, **processor_kwargs).save_pretrained(folder)
    return Path(folder)


def load_script(path: str | Path, module_name: str) -> Any:
    """Imports a command-line script of the repository (`scripts/*.py`, not a package module) as a module, so that
    tests can call its functions; its `main` does not run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
