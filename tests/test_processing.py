"""CATSegProcessor: prompt token ids, class-name rules, errors, save/load (also as remote code)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from catseg_hf import CATSegImageProcessor, CATSegProcessor, build_clip_tokenizer
from catseg_hf.processing_catseg import DEFAULT_PROMPT_TEMPLATES, first_synonym

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def processor(bpe_path: Path) -> CATSegProcessor:
    return CATSegProcessor(CATSegImageProcessor(), build_clip_tokenizer(bpe_path))


@pytest.fixture(scope="module")
def fixture_class_names(official_tiny_dir: Path) -> list[str]:
    return json.loads((official_tiny_dir / "classes.json").read_text())


def test_token_ids_match_official(processor, official_io, fixture_class_names) -> None:
    out = processor(text=fixture_class_names)
    assert set(out.keys()) == {"input_ids", "attention_mask"}
    assert out["input_ids"].shape == (12, 1, 77) and out["input_ids"].dtype == torch.int64
    assert out["attention_mask"].dtype == torch.int64
    assert torch.equal(out["input_ids"][:, 0], official_io["text.token_ids"])
    assert torch.equal(out["attention_mask"][:, 0], (official_io["text.token_ids"] != 0).long())


def test_images_and_text_together(processor, official_io, fixture_class_names) -> None:
    out = processor(images=official_io["img0.image"], text=fixture_class_names, mode="whole")
    assert set(out.keys()) == {"pixel_values", "original_sizes", "view_layout", "input_ids", "attention_mask"}
    assert (out["pixel_values"] - official_io["img0.clip_input"]).abs().max().item() <= 1e-5
    sliding = processor(images=[official_io["img0.image"], official_io["img1.image"]], text=["cat"])
    assert sliding["pixel_values"].shape == (10, 3, 384, 384)
    assert sliding["view_layout"].tolist() == [[640, 640, 384, 256]] * 2
    assert sliding["original_sizes"].tolist() == [[480, 640], [150, 210]]
    only_images = processor(images=official_io["img1.image"])
    assert set(only_images.keys()) == {"pixel_values", "original_sizes", "view_layout"}


def test_synonyms_and_whitespace(processor) -> None:
    assert first_synonym("person, individual, someone") == "person"
    assert first_synonym("traffic light") == "traffic light"
    assert first_synonym("a,b") == "a,b"  # only ", " separates synonyms
    ids = processor(text=["person, individual, someone", "bed ", "road, route"])["input_ids"]
    expected = processor(text=["person", "bed", "road"])["input_ids"]
    assert torch.equal(ids, expected)


def test_several_templates(processor) -> None:
    templates = ["a photo of a {}.", "There is a {} in the scene", "{}"]
    names = ["cat", "dog", "wall, partition"]
    out = processor(text=names, prompt_templates=templates)
    assert out["input_ids"].shape == (3, 3, 77) and out["attention_mask"].shape == (3, 3, 77)
    for p, template in enumerate(templates):
        single = processor(text=names, prompt_templates=[template])["input_ids"][:, 0]
        assert torch.equal(out["input_ids"][:, p], single)
    assert out["input_ids"][2, 2, :3].tolist() == [SOT, processor.tokenizer.convert_tokens_to_ids("wall</w>"), EOT]
    # A single template string is one template.
    assert torch.equal(processor(text=names, prompt_templates="{}")["input_ids"][:, 0], out["input_ids"][:, 2])


def test_default_templates_come_from_the_processor(processor) -> None:
    assert processor.prompt_templates == DEFAULT_PROMPT_TEMPLATES == ["A photo of a {} in the scene"]
    custom = CATSegProcessor(processor.image_processor, processor.tokenizer, prompt_templates=["a {}", "the {}"])
    assert custom(text=["cat"])["input_ids"].shape == (1, 2, 77)
    assert torch.equal(custom.encode_class_names(["cat"])["input_ids"], custom(text=["cat"])["input_ids"])


def test_no_state_between_calls(processor) -> None:
    first = processor(text=["cat", "dog"])["input_ids"]
    processor(text=["sky", "grass", "tree"], prompt_templates=["{}", "a {}"])
    assert torch.equal(processor(text=["cat", "dog"])["input_ids"], first)


@pytest.mark.parametrize(
    "text, error, match",
    [
        ([], ValueError, "empty"),
        (["cat", ""], ValueError, "indices \\[1\\] are empty"),
        (["cat", "   "], ValueError, "empty"),
        ([", cat"], ValueError, "empty"),
        (["cat", "dog", "cat"], ValueError, "Duplicate class names.*'cat', 0, 2"),
        ("cat, dog", ValueError, "list of class names.*\\['cat', 'dog', 'grass'\\]"),
        (["cat", 3], TypeError, "must be strings"),
        ({"cat"}, TypeError, "list of class-name strings"),
    ],
)
def test_bad_class_names(processor, text, error, match) -> None:
    with pytest.raises(error, match=match):
        processor(text=text)


def test_same_first_synonym_is_allowed(processor) -> None:
    # ADE-847 has different entries sharing a first synonym (e.g. two "bag, ..." classes): they stay two classes.
    out = processor(text=["bag, handbag", "bag, traveling bag"])
    assert torch.equal(out["input_ids"][0], out["input_ids"][1])


@pytest.mark.parametrize("templates", [[], ["no placeholder"], ["{} and {}"], [3]])
def test_bad_templates(processor, templates) -> None:
    with pytest.raises(ValueError, match="template"):
        processor(text=["cat"], prompt_templates=templates)


def test_neither_images_nor_text(processor) -> None:
    with pytest.raises(ValueError, match="Pass `images`"):
        processor()


def test_long_names_are_truncated_with_a_warning(processor, caplog) -> None:
    long_name = " ".join(["enormous"] * 100)
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        out = processor(text=["cat", long_name])
    assert long_name in caplog.text and "truncated" in caplog.text and "cat'" not in caplog.text
    ids, mask = out["input_ids"][1, 0], out["attention_mask"][1, 0]
    assert ids.shape == (77,) and ids[0] == SOT and ids[-1] == EOT and mask.all()
    assert out["input_ids"][0, 0, 0] == SOT
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        processor(text=["cat", "dog"])
    assert "truncated" not in caplog.text


def test_numpy_output(processor) -> None:
    out = processor(images=np.zeros((8, 9, 3), np.uint8), text=["cat"], return_tensors="np")
    assert all(isinstance(v, np.ndarray) for v in out.values())
    assert out["input_ids"].dtype == np.int64 and out["pixel_values"].dtype == np.float32


def test_post_processing_delegates(processor) -> None:
    inputs = processor(images=[np.zeros((30, 40, 3), np.uint8)], text=["a", "b", "c"])
    logits = torch.randn(inputs["pixel_values"].shape[0], 3, 24, 24, generator=torch.Generator().manual_seed(0))
    outputs = {"logits": logits, "original_sizes": inputs["original_sizes"], "view_layout": inputs["view_layout"]}
    maps = processor.post_process_semantic_segmentation(outputs)
    assert torch.equal(maps[0], processor.image_processor.post_process_semantic_segmentation(outputs)[0])
    assert maps[0].shape == (30, 40)


def test_save_and_load_with_auto_processor(processor, tmp_path: Path, fixture_class_names) -> None:
    custom = CATSegProcessor(
        CATSegImageProcessor(mode="whole", clip_resolution=336), processor.tokenizer, prompt_templates=["a {}", "{}"]
    )
    custom.save_pretrained(tmp_path)
    for loaded in (CATSegProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, CATSegProcessor)
        assert loaded.prompt_templates == ["a {}", "{}"]
        assert loaded.image_processor.mode == "whole" and loaded.image_processor.clip_resolution == 336
        image = np.full((20, 25, 3), 77, np.uint8)
        a, b = loaded(images=image, text=fixture_class_names), custom(images=image, text=fixture_class_names)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_saved_folder_loads_as_remote_code_without_catseg_hf(processor, tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    processor.save_pretrained(folder)
    assert (folder / "processing_catseg.py").is_file() and (folder / "image_processing_catseg.py").is_file()
    expected = processor(images=np.full((20, 25, 3), 77, np.uint8), text=["cat", "dog, puppy"])
    torch.save(dict(expected), tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["catseg_hf"] = None  # make any import of the installed package fail
        import numpy as np, torch
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(processor).__name__ == "CATSegProcessor", type(processor)
        assert not type(processor).__module__.startswith("catseg_hf"), type(processor).__module__
        out = processor(images=np.full((20, 25, 3), 77, np.uint8), text=["cat", "dog, puppy"])
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert out.keys() == expected.keys(), (out.keys(), expected.keys())
        assert all(torch.equal(out[k], expected[k]) for k in out)
        print("remote-ok")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0 and "remote-ok" in result.stdout, result.stderr[-3000:]
