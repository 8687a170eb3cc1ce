"""Tests for the demo model's two stages (catseg_hf.training.clip_pretraining, catseg_hf.training.tiny_shapes), the
fine-tuning study script and the shipped model's open-vocabulary claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from catseg_hf.data import synthetic
from catseg_hf.data.synthetic import CLASS_NAMES, HELDOUT_COMBOS, SEEN_CLASS_NAMES, captioned_scenes
from catseg_hf.training import load_datasets, parse_recipe_and_overrides
from catseg_hf.training.clip_pretraining import check_image_level, pretrain_clip, zero_shot_accuracy
from catseg_hf.training.tiny_shapes import harmonic_mean, pretrain_tiny_clip

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "tiny_shapes.yaml"
HELDOUT_NAMES = {f"{color} {shape}" for color, shape in HELDOUT_COMBOS}


def bpe_file(shared_path: Path) -> Path:
    return shared_path / "fixtures" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"


# ------------------------------------------------------------------------------------------- stage 1: no masks
def test_captioned_scenes_are_image_level_and_cover_every_combination():
    examples = list(captioned_scenes("pretrain", 0, num_images=200, image_size=64))
    assert all(set(example) == {"image", "caption", "class_names"} for example in examples)
    shown = {name for example in examples for name in example["class_names"]}
    assert shown == set(CLASS_NAMES[1:])  # all 16, held-out combinations included
    for example in examples:
        assert example["caption"].startswith("A photo of a ") and example["caption"].endswith(" in the scene")
        assert all(name in example["caption"] for name in example["class_names"])
        # The image shows each named combination: its colour is present in the picture.
        pixels = np.asarray(example["image"]).reshape(-1, 3).astype(int)
        for name in example["class_names"]:
            colour = np.asarray(synthetic.COLORS[name.split()[0]])
            assert (np.abs(pixels - colour).max(axis=1) < 45).any(), name
    zero_shot = list(captioned_scenes("zeroshot", 0, num_images=40, image_size=64))
    assert all(len(example["class_names"]) == 1 for example in zero_shot)
    again = next(captioned_scenes("pretrain", 0, num_images=1, image_size=64))
    assert again["caption"] == examples[0]["caption"] and np.array_equal(np.asarray(again["image"]),
                                                                         np.asarray(examples[0]["image"]))
    with pytest.raises(ValueError, match="caption split"):
        next(captioned_scenes("train", 0))


def test_clip_pretraining_refuses_dense_targets():
    with pytest.raises(ValueError, match="never masks"):
        check_image_level({"image": None, "caption": "a", "label": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="'image' and 'caption'"):
        check_image_level({"image": None})


def test_stage1_sees_no_mask(monkeypatch, tmp_path, shared_path):
    """Stage 1 never builds the segmentation dataset and every example it trains on is image-level."""
    def no_segmentation_data(*args, **kwargs):
        raise AssertionError("stage 1 must not load the segmentation dataset (it holds masks)")

    monkeypatch.setattr(synthetic, "make_synthetic_dataset", no_segmentation_data)
    import catseg_hf.data as data_package

    monkeypatch.setattr(data_package, "make_synthetic_dataset", no_segmentation_data)
    seen_examples: list[dict] = []
    real_check = check_image_level

    def recording_check(example):
        seen_examples.append(example)
        real_check(example)

    from catseg_hf.training import clip_pretraining

    monkeypatch.setattr(clip_pretraining, "check_image_level", recording_check)
    facts = pretrain_tiny_clip(RECIPE, bpe_file(shared_path), tmp_path / "clip", steps=2, batch_size=3,
                               zero_shot_images=4)
    assert len(seen_examples) == 6 and all(set(e) == {"image", "caption", "class_names"} for e in seen_examples)
    assert 0.0 <= facts["zero_shot_accuracy"] <= 1.0 and facts["zero_shot_images"] == 4
    assert (tmp_path / "clip" / "model.safetensors").is_file()
    from transformers import CLIPModel

    CLIPModel.from_pretrained(tmp_path / "clip")  # a plain CLIP folder, loadable as --clip_model_name_or_path


def test_contrastive_pretraining_learns_and_zero_shot_accuracy_counts(shared_path):
    from catseg_hf.training import build_model, build_processor

    model_args, _, _ = parse_recipe_and_overrides([str(RECIPE), "--bpe_path", str(bpe_file(shared_path))])
    torch.manual_seed(0)
    model = build_model(model_args)
    processor = build_processor(model, model_args)
    clip = model.clip.requires_grad_(True)
    # Two fixed pairs, shown again and again: the contrastive loss must fall.
    pairs = list(captioned_scenes("zeroshot", 1, num_images=2, image_size=64))
    first = pretrain_clip(clip, processor, iter(pairs * 1), steps=1, batch_size=2, warmup_steps=1, log_every=0)
    later = pretrain_clip(clip, processor, iter(pairs * 30), steps=30, batch_size=2, warmup_steps=1, log_every=0)
    assert later["loss"] < first["loss"]
    names = [e["class_names"][0] for e in pairs]
    accuracy = zero_shot_accuracy(clip, processor, pairs, names, template=synthetic.CAPTION_TEMPLATE)
    assert accuracy["num_images"] == 2 and accuracy["accuracy"] == 1.0
    with pytest.raises(ValueError, match="ran out"):
        pretrain_clip(clip, processor, iter(pairs), steps=2, batch_size=2)
    with pytest.raises(ValueError, match="never masks"):
        pretrain_clip(clip, processor, iter([{**pairs[0], "mask": 1}, pairs[1]]), steps=1, batch_size=2)


# ----------------------------------------------------------------------------- stage 2: no held-out class
def test_stage2_data_pipeline_never_holds_a_heldout_class(shared_path):
    model_args, data_args, training_args = parse_recipe_and_overrides(
        [str(RECIPE), "--bpe_path", str(bpe_file(shared_path)), "--synthetic_train_size", "48"]
    )
    train, evaluation, class_names, _ = load_datasets(data_args, training_args.seed, model_args)
    assert class_names == SEEN_CLASS_NAMES and not HELDOUT_NAMES & set(class_names)
    assert evaluation is None  # measured afterwards with all 17 names, outside training
    ids = set()
    for index in range(len(train)):
        ids.update(np.unique(np.asarray(train[index]["label"])).tolist())
    assert ids <= set(range(len(class_names))) | {255} and len(ids - {255}) > 6
    # The raw renders behind the training split: only seen combinations, in 17-name ids.
    raw, all_names = synthetic.make_synthetic_dataset("train", 48, data_args.synthetic_seed,
                                                      image_size=data_args.synthetic_image_size)
    raw_names = {all_names[i] for row in raw for i in np.unique(np.asarray(row["label"]))}
    assert not raw_names & HELDOUT_NAMES
    with pytest.raises(ValueError, match="does not name"):
        synthetic.make_synthetic_dataset("heldout", 2, 0, vocabulary="seen")


def test_harmonic_mean():
    assert harmonic_mean(0.8, 0.4) == pytest.approx(2 * 0.32 / 1.2)
    assert harmonic_mean(0.9, 0.0) == 0.0


# ------------------------------------------------------------------------------------------------- the study
def test_finetuning_study_runs_end_to_end_in_quick_mode(tmp_path, shared_path):
    output = tmp_path / "study.json"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "reproduce_finetuning_study.py"), "--quick", "--jobs", "2",
               "--bpe", str(bpe_file(shared_path)), "--output", str(output), "--work-dir", str(tmp_path / "work")]
    # Two training processes at once, and without train.py's restart under the tuned allocator (tested on its own in
    # tests/test_cpu_allocator.py): a smoke run whose time is process start-up.
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CATSEG_CPU_ALLOCATOR="default")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = json.loads(output.read_text())
    assert set(study["summary"]) == {"frozen", "attention", "full"} and study["best_mode"] in study["summary"]
    assert len(study["runs"]) == 3 and all(0 <= run["seen_miou"] <= 1 for run in study["runs"])
    configs = {run["mode"]: json.loads((Path(run["folder"]) / "config.json").read_text()) for run in study["runs"]}
    assert {mode: config["clip_finetune"] for mode, config in configs.items()} == {m: m for m in configs}
    assert all(set(config["id2label"].values()) == set(SEEN_CLASS_NAMES) for config in configs.values())
    assert "| attention (Q,V) fine-tuning |" in output.with_suffix(".md").read_text()

