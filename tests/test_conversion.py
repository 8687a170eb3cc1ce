"""The official-checkpoint converter and the fidelity of the converted model to the official fixture."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from catseg_hf import CATSegForSemanticSegmentation
from catseg_hf.conversion import (
    CheckpointMismatchError,
    config_from_official,
    convert_official_checkpoint,
    convert_official_state_dict,
    load_official_state_dict,
)

from .conftest import REPO_ROOT


def assert_close_to_reference(actual: torch.Tensor, reference: torch.Tensor, name: str, rel: float = 1e-4) -> None:
    """max |actual - reference| <= rel * max |reference| (the issue's tolerance), on the same shape."""
    assert actual.shape == reference.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    actual, reference = actual.float(), reference.float()
    scale = reference.abs().max().item()
    error = (actual - reference).abs().max().item()
    assert error <= rel * scale, f"{name}: max abs error {error:.3e} > {rel} * {scale:.3e}"


def assert_logits_close(actual: torch.Tensor, reference: torch.Tensor, name: str) -> None:
    """As above, but classes dropped by the top-k (exactly -100) must sit at exactly the same positions and are
    left out of the scale."""
    dropped = reference == -100.0
    assert torch.equal(actual == -100.0, dropped), f"{name}: dropped-class positions differ"
    assert_close_to_reference(actual[~dropped], reference[~dropped], name)


@contextmanager
def pooling(model: CATSegForSemanticSegmentation, size: list[int], training: bool = False):
    config = model.config
    saved = (list(config.training_pooling_size), list(config.inference_pooling_size), model.training)
    if training:
        config.training_pooling_size = size
    else:
        config.inference_pooling_size = size
    model.train(training)
    try:
        yield
    finally:
        config.training_pooling_size, config.inference_pooling_size = saved[0], saved[1]
        model.train(saved[2])


def test_config_read_from_official_checkpoint(converted_official_tiny):
    config = converted_official_tiny.config
    assert config.clip_resolution == 384
    assert config.guidance_layer_indices == [3, 7]
    assert config.training_pooling_size == [2, 2] and config.inference_pooling_size == [1, 1]
    assert config.clip_config.vision_config.hidden_size == 64
    assert config.clip_config.vision_config.num_hidden_layers == 12
    assert config.clip_config.text_config.num_hidden_layers == 4
    assert config.clip_config.projection_dim == 32
    assert config.prompt_templates == ["A photo of a {} in the scene"]


def test_text_embeddings_match_official(official):
    model, io = official.model, official.io
    with torch.no_grad():
        raw = model.clip.get_text_features(input_ids=io["text.token_ids"]).pooler_output
        embeddings = model.get_class_embeddings(io["text.token_ids"].unsqueeze(1))
    assert_close_to_reference(raw, io["text.embeds_raw"], "text.embeds_raw")
    assert_close_to_reference(embeddings, io["text.feats"][0], "text.feats", rel=1e-5)


def test_image_side_matches_official(official):
    model, io = official.model, official.io
    layers = model.config.guidance_layer_indices
    with torch.no_grad(), pooling(model, [1, 1]):
        outputs = model(pixel_values=io["img0.clip_input"], class_embeddings=io["text.feats"][0], output_intermediates=True)
    features = outputs.image_features
    assert_close_to_reference(features.dense_embeddings, io["img0.clip_features"], "clip_features")
    # The fixture's hooks are sequence-first (tokens, batch, width).
    for tap, layer in zip(features.guidance_taps, layers):
        assert_close_to_reference(tap, io[f"img0.hook.layer{layer}"].transpose(0, 1), f"hook.layer{layer}")
    assert_close_to_reference(features.image_embeddings, io["img0.res3"], "res3")
    assert_close_to_reference(features.decoder_guidance[0], io["img0.res4"], "res4")
    assert_close_to_reference(features.decoder_guidance[1], io["img0.res5"], "res5")
    assert_close_to_reference(outputs.cost_volume, io["img0.corr"], "corr")
    if "img0.topk_classes_sorted" in io:
        assert torch.equal(outputs.selected_classes, io["img0.topk_classes_sorted"])
    else:
        assert outputs.selected_classes is None


@pytest.mark.parametrize("pool", [[1, 1], [2, 2]])
def test_logits_match_official(official, pool):
    model, io = official.model, official.io
    checked = 0
    for image in official.images:
        reference = io.get(f"{image}.logits96.pool{pool[0]}x{pool[1]}")
        if reference is None:
            continue
        with torch.no_grad(), pooling(model, pool):
            logits = model(pixel_values=io[f"{image}.clip_input"], input_ids=io["text.token_ids"].unsqueeze(1)).logits
        assert_logits_close(logits, reference, f"{official.name} {image} pool {pool}")
        checked += 1
    assert checked


@pytest.mark.parametrize("pool", [[2, 2], [1, 1]])
def test_training_loss_matches_official(official, pool):
    """Ignored pixels (255) count with an all-zero target whatever the number of classes (the top-k fixture has 280
    classes, so 255 is also a class id there)."""
    model, io = official.model, official.io
    images = io["train.images"]
    mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.image_std).view(1, 3, 1, 1)
    normalised = (images - mean) / std
    # Padded bottom/right to a multiple of 32 (after normalisation), then resized to the CLIP resolution.
    height, width = normalised.shape[-2:]
    normalised = F.pad(normalised, (0, -width % 32, 0, -height % 32))
    pixel_values = F.interpolate(normalised, size=(384, 384), mode="bilinear", align_corners=False)
    # Without gradients (only the value is compared): the graph of this 280-class training forward took ~20 GB.
    with pooling(model, pool, training=True), torch.no_grad():
        assert model.pooling_size == tuple(pool)
        loss = model(
            pixel_values=pixel_values, input_ids=io["text.token_ids"].unsqueeze(1), labels=io["train.targets"]
        ).loss
    reference = io[f"train.loss.pool{pool[0]}x{pool[1]}"].item()
    assert abs(loss.item() - reference) <= 1e-6 * abs(reference), (official.name, loss.item(), reference)


def test_safetensors_checkpoint_converts_identically(official_tiny_dir, tmp_path, converted_official_tiny):
    from safetensors.torch import save_file

    state_dict = load_official_state_dict(official_tiny_dir / "checkpoint.pth")
    path = tmp_path / "checkpoint.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    model = convert_official_checkpoint(path, official_config=official_tiny_dir / "config.json")
    reference = converted_official_tiny.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_converter_refuses_missing_and_extra_tensors(official_tiny_dir):
    state_dict = load_official_state_dict(official_tiny_dir / "checkpoint.pth")
    config = config_from_official(state_dict, official_config=json.loads((official_tiny_dir / "config.json").read_text()))
    missing_key = "sem_seg_head.predictor.transformer.head.bias"
    broken = dict(state_dict)
    del broken[missing_key]
    with pytest.raises(CheckpointMismatchError, match=r"aggregator\.head\.bias"):
        convert_official_state_dict(broken, config)
    extra = dict(state_dict)
    extra["sem_seg_head.predictor.transformer.mystery.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"mystery\.weight"):
        convert_official_state_dict(extra, config)
    wrong_mask = dict(state_dict)
    mask_key = "sem_seg_head.predictor.transformer.layers.0.swin_block.block_2.attn_mask"
    wrong_mask[mask_key] = torch.zeros_like(state_dict[mask_key])
    with pytest.raises(CheckpointMismatchError, match="shifted-window mask"):
        convert_official_state_dict(wrong_mask, config)


def test_every_parameter_comes_from_the_checkpoint(official_tiny_dir):
    state_dict = load_official_state_dict(official_tiny_dir / "checkpoint.pth")
    config = config_from_official(state_dict, official_config=json.loads((official_tiny_dir / "config.json").read_text()))
    converted = convert_official_state_dict(state_dict, config)
    # 372 official tensors: 16 in_proj_bias each split into 3; the 2 attn_mask buffers (one per layer) dropped.
    num_attention_blocks = 12 + 4
    assert len(converted) == len(state_dict) + 2 * num_attention_blocks - 2
    assert set(converted) == set(CATSegForSemanticSegmentation(config).state_dict())


def test_conversion_script_writes_a_loadable_folder(official_tiny_dir, tmp_path, official_io):
    output = tmp_path / "converted"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "convert_official_checkpoint.py"),
            "--checkpoint", str(official_tiny_dir / "checkpoint.pth"),
            "--output", str(output),
            "--variant", "base",
            "--official-config", str(official_tiny_dir / "config.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (output / "model.safetensors").is_file()
    card = (output / "README.md").read_text()
    assert card.startswith("---") and "library_name: transformers" in card
    model = CATSegForSemanticSegmentation.from_pretrained(output).eval()
    with torch.no_grad():
        logits = model(pixel_values=official_io["img1.clip_input"], class_embeddings=official_io["text.feats"][0]).logits
    assert_logits_close(logits, official_io["img1.logits96.pool1x1"], "reloaded img1")
