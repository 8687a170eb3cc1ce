"""CATSegProcessor: prompt token ids, class-name rules, kwargs routing, errors, save/load (also as remote code)."""

from __future__ import annotations

import hashlib
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
    out = processor(text=fixture_class_names, return_tensors="pt")
    assert set(out.keys()) == {"input_ids", "attention_mask"}
    assert out["input_ids"].shape == (12, 1, 77) and out["input_ids"].dtype == torch.int64
    assert out["attention_mask"].dtype == torch.int64
    assert torch.equal(out["input_ids"][:, 0], official_io["text.token_ids"])
    assert torch.equal(out["attention_mask"][:, 0], (official_io["text.token_ids"] != 0).long())


def test_images_and_text_together(processor, official_io, fixture_class_names) -> None:
    out = processor(images=official_io["img0.image"], text=fixture_class_names, mode="whole", return_tensors="pt")
    assert set(out.keys()) == {"pixel_values", "input_ids", "attention_mask"} == set(processor.model_input_names)
    assert (out["pixel_values"] - official_io["img0.clip_input"]).abs().max().item() <= 1e-5
    images = [official_io["img0.image"], official_io["img1.image"]]
    sliding = processor(images=images, text=["cat"], return_tensors="pt")
    assert sliding["pixel_values"].shape == (2, 5, 3, 384, 384)
    assert torch.equal(sliding["pixel_values"], processor.image_processor(images, return_tensors="pt")["pixel_values"])
    only_images = processor(images=official_io["img1.image"], return_tensors="pt")
    assert set(only_images.keys()) == {"pixel_values"}


def test_synonyms_and_whitespace(processor) -> None:
    assert first_synonym("person, individual, someone") == "person"
    assert first_synonym("traffic light") == "traffic light"
    assert first_synonym("a,b") == "a,b"  # only ", " separates synonyms
    ids = processor(text=["person, individual, someone", "bed ", "road, route"], return_tensors="pt")["input_ids"]
    expected = processor(text=["person", "bed", "road"], return_tensors="pt")["input_ids"]
    assert torch.equal(ids, expected)
    # One string is one class name, synonyms included.
    assert torch.equal(processor(text="road, route", return_tensors="pt")["input_ids"], expected[2:])


def test_several_templates(processor) -> None:
    templates = ["a photo of a {}.", "There is a {} in the scene", "{}"]
    names = ["cat", "dog", "wall, partition"]
    out = processor.encode_class_names(names, prompt_templates=templates)
    assert out["input_ids"].shape == (3, 3, 77) and out["attention_mask"].shape == (3, 3, 77)
    for p, template in enumerate(templates):
        single = processor.encode_class_names(names, prompt_templates=[template])["input_ids"][:, 0]
        assert torch.equal(out["input_ids"][:, p], single)
    assert out["input_ids"][2, 2, :3].tolist() == [SOT, processor.tokenizer.convert_tokens_to_ids("wall</w>"), EOT]
    # A single template string is one template.
    one_template = processor.encode_class_names(names, prompt_templates="{}")["input_ids"]
    assert torch.equal(one_template[:, 0], out["input_ids"][:, 2])
    # The processor's templates are its own setting, not a per-call argument.
    with_templates = CATSegProcessor(processor.image_processor, processor.tokenizer, prompt_templates=templates)
    assert torch.equal(with_templates(text=names, return_tensors="pt")["input_ids"], out["input_ids"])
    with pytest.raises(TypeError, match=r"encode_class_names\(names, prompt_templates=...\)"):
        processor(text=names, prompt_templates=templates)


def test_default_templates_come_from_the_processor(processor) -> None:
    assert processor.prompt_templates == DEFAULT_PROMPT_TEMPLATES == ["A photo of a {} in the scene"]
    custom = CATSegProcessor(processor.image_processor, processor.tokenizer, prompt_templates=["a {}", "the {}"])
    assert custom(text=["cat"], return_tensors="pt")["input_ids"].shape == (1, 2, 77)
    assert torch.equal(
        custom.encode_class_names(["cat"])["input_ids"], custom(text=["cat"], return_tensors="pt")["input_ids"]
    )


def test_no_state_between_calls(processor) -> None:
    first = processor(text=["cat", "dog"], return_tensors="pt")["input_ids"]
    processor(text=["sky", "grass", "tree"], padding="longest")
    processor.encode_class_names(["sky", "grass"], prompt_templates=["{}", "a {}"])
    assert torch.equal(processor(text=["cat", "dog"], return_tensors="pt")["input_ids"], first)


@pytest.mark.parametrize(
    "text, error, match",
    [
        ([], ValueError, "empty"),
        (["cat", ""], ValueError, "indices \\[1\\] are empty"),
        (["cat", "   "], ValueError, "empty"),
        ([", cat"], ValueError, "empty"),
        (["cat", "dog", "cat"], ValueError, "Duplicate class names.*'cat', 0, 2"),
        ("", ValueError, "empty"),
        (["cat", 3], TypeError, "must be strings"),
        ({"cat"}, TypeError, "a class name or a list of class names"),
    ],
)
def test_bad_class_names(processor, text, error, match) -> None:
    with pytest.raises(error, match=match):
        processor(text=text)


def test_text_kwargs_reach_the_tokenizer(processor) -> None:
    names = ["cat", "traffic light"]
    default = processor(text=names, return_tensors="pt")
    ragged = processor(text=names, padding=False)["input_ids"]
    lengths = [len(ids[0]) for ids in ragged]
    assert lengths[1] > lengths[0]
    longest = processor(text=names, padding="longest", return_tensors="pt")
    assert longest["input_ids"].shape == (2, 1, lengths[1])
    assert torch.equal(longest["input_ids"], default["input_ids"][..., : lengths[1]])
    grouped = processor(text=names, text_kwargs={"padding": "max_length", "max_length": 16}, return_tensors="pt")
    assert grouped["input_ids"].shape == (2, 1, 16)
    multiple = processor(text=names, padding="longest", pad_to_multiple_of=8, max_length=64, return_tensors="pt")
    assert multiple["input_ids"].shape[-1] == 16
    assert set(processor(text=names, return_attention_mask=False, return_tensors="pt").keys()) == {"input_ids"}
    truncated = processor(text=["a very long name of a class"], max_length=6, return_tensors="pt")["input_ids"][0, 0]
    assert truncated.shape == (6,) and truncated[0] == SOT and truncated[-1] == EOT
    with pytest.raises(ValueError, match="different lengths"):
        processor(text=names, padding=False, return_tensors="pt")
    with pytest.raises(ValueError, match="context of 77 tokens"):
        processor(text=names, max_length=78)
    with pytest.raises(ValueError, match="truncation is off"):
        processor(text=[" ".join(["enormous"] * 100)], truncation=False)


def test_image_kwargs_reach_the_image_processor(processor) -> None:
    image = np.zeros((30, 40, 3), np.uint8)
    whole = processor(images=image, mode="whole", return_tensors="pt")["pixel_values"]
    assert whole.shape == (1, 3, 384, 384)
    grouped = processor(images=image, images_kwargs={"mode": "whole"}, return_tensors="pt")["pixel_values"]
    assert torch.equal(grouped, whole)
    small = processor(images=image, clip_resolution=32, common_kwargs={"return_tensors": "np"})["pixel_values"]
    assert isinstance(small, np.ndarray) and small.shape == (1, 5, 3, 32, 32)
    rescaled = processor(images=image, do_rescale=True, rescale_factor=-1.0, return_tensors="pt")["pixel_values"]
    assert rescaled.max() < 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mode": "whole", "images_kwargs": {"mode": "whole"}}, ValueError, "passed two times"),
        ({"padding": "longest", "text_kwargs": {"padding": "do_not_pad"}}, ValueError, "passed two times"),
        ({"return_tensors": "pt", "common_kwargs": {"return_tensors": "np"}}, ValueError, "different values"),
        ({"text_kwargs": {"return_tensors": "pt"}, "common_kwargs": {"return_tensors": "np"}}, ValueError, "differ"),
        ({"clip_resolutoin": 32}, TypeError, "unexpected keyword argument `clip_resolutoin`"),
        ({"images_kwargs": {"paddding": True}}, TypeError, "unexpected keyword argument\\(s\\) \\['paddding'\\]"),
        ({"videos_kwargs": {}}, TypeError, "images and text only"),
        ({"size": {"height": 8, "width": 8}}, ValueError, "does not support \\['size'\\]"),
        ({"do_resize": True}, ValueError, "does not support \\['do_resize'\\]"),
        ({"return_offsets_mapping": True}, ValueError, "return_offsets_mapping"),
        ({"text_pair": "dog"}, ValueError, "text_pair"),
        ({"padding_side": "left"}, ValueError, "right-padded"),
        ({"add_special_tokens": False}, ValueError, "end-of-text"),
        ({"return_mm_token_type_ids": True}, ValueError, "return_mm_token_type_ids"),
        ({"return_tensors": "tf"}, ValueError, "return_tensors"),
    ],
)
def test_kwargs_that_would_be_ignored_raise(processor, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        processor(images=np.zeros((8, 9, 3), np.uint8), text=["cat"], **kwargs)


def test_modality_kwargs_without_that_modality_raise(processor) -> None:
    with pytest.raises(ValueError, match="without `images`"):
        processor(text=["cat"], mode="whole")
    with pytest.raises(ValueError, match="without `text`"):
        processor(images=np.zeros((8, 9, 3), np.uint8), max_length=10)
    # return_tensors is common to both.
    assert processor(text=["cat"], return_tensors="np")["input_ids"].shape == (1, 1, 77)


def _fresh_processor(processor: CATSegProcessor) -> CATSegProcessor:
    # The warnings come once per vocabulary and processor: a new processor has warned about none yet.
    return CATSegProcessor(processor.image_processor, processor.tokenizer)


def test_same_first_synonym_is_allowed_with_a_warning(processor, caplog) -> None:
    # ADE-847 has different entries sharing a first synonym (e.g. two "bag, ..." classes): they stay two classes.
    fresh = _fresh_processor(processor)
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        out = fresh(text=["bag, handbag", "bag, traveling bag"], return_tensors="pt")
    assert torch.equal(out["input_ids"][0], out["input_ids"][1])
    assert "'bag, handbag' (index 0) = 'bag, traveling bag' (index 1)" in caplog.text


@pytest.mark.parametrize(
    "names, expected",
    [
        (["Cat", "dog", "cat "], "'Cat' (index 0) = 'cat ' (index 2)"),
        (["sofa, couch", "chair", "sofa, chair"], "'sofa, couch' (index 0) = 'sofa, chair' (index 2)"),
        (["TV", "tv", "  Tv"], "'TV' (index 0) = 'tv' (index 1) = '  Tv' (index 2)"),
    ],
)
def test_names_with_identical_prompts_warn_once_per_vocabulary(processor, caplog, names, expected) -> None:
    fresh = _fresh_processor(processor)
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        out = fresh(text=names, return_tensors="pt")
    assert out["input_ids"].shape == (3, 1, 77)
    assert caplog.text.count("identical prompts") == 1 and expected in caplog.text
    assert "1 group(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        fresh(text=names, return_tensors="pt")
        fresh.encode_class_names(names)
    assert "identical prompts" not in caplog.text
    # Another vocabulary is warned about again.
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        fresh(text=[*names, "sky"])
    assert caplog.text.count("identical prompts") == 1
    caplog.clear()
    # Names that differ in what the text encoder reads do not warn.
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        fresh(text=["cat", "cats", "Cat dog", "sofa", "couch, sofa"])
    assert "identical prompts" not in caplog.text


def test_identical_prompts_are_judged_over_every_template(processor, caplog) -> None:
    fresh = CATSegProcessor(processor.image_processor, processor.tokenizer, prompt_templates=["{}", "x {}"])
    # Truncated to 5 tokens the names read the same in the second template only: the encoder can tell them apart.
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        out = fresh(text=["big red cat", "big red dog"], max_length=5, return_tensors="pt")
    assert torch.equal(out["input_ids"][0, 1], out["input_ids"][1, 1])
    assert not torch.equal(out["input_ids"][0, 0], out["input_ids"][1, 0])
    assert "identical prompts" not in caplog.text
    # Truncated to 4 tokens they read the same in both: that is what the encoder sees, so it warns.
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        fresh(text=["big red cat", "big red dog"], max_length=4)
    assert "'big red cat' (index 0) = 'big red dog' (index 1)" in caplog.text


def test_literally_identical_names_stay_an_error(processor) -> None:
    with pytest.raises(ValueError, match="Duplicate class names.*\\('Cat', 0, 2\\)"):
        processor(text=["Cat", "cat", "Cat"])


def test_ade847_vocabulary_tokenises_as_before_with_one_warning(processor, shared_path, caplog) -> None:
    names = json.loads((shared_path / "benchmarks" / "ade847.json").read_text())
    fresh = _fresh_processor(processor)
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        out = fresh(text=names, return_tensors="np")
        again = fresh(text=names, return_tensors="np")
    assert caplog.text.count("identical prompts") == 1 and "9 group(s)" in caplog.text
    assert "'bag' (index 114) = 'bag, traveling bag, travelling bag, grip, suitcase' (index 191) = " in caplog.text
    assert "'pot, flowerpot' (index 130) = 'pot' (index 188)" in caplog.text
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (847, 1, 77) and np.array_equal(again["input_ids"], ids)
    # The ids as they were before the collision check (sha256 of the little-endian int64 ids and mask).
    assert hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest() == (
        "aadec46fea5b612e7e30848804c25c9d03bdd9efd4dc5d44b42aee5ef5dd4fb8"
    )
    assert hashlib.sha256(mask.astype("<i8").tobytes()).hexdigest() == (
        "724eaad31621ead2ef4eac8c52938635f684a5eea79759f5b17c568a055522b3"
    )
    # The first-synonym rule, restated with the tokenizer alone.
    prompts = [DEFAULT_PROMPT_TEMPLATES[0].format(name.split(", ")[0]) for name in names]
    direct = processor.tokenizer(prompts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert np.array_equal(ids[:, 0], np.array(direct))
    assert np.array_equal(ids[114], ids[191]) and np.array_equal(ids[114], ids[252])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"images": []}, ValueError, r"No image given \(images=\[\]\)"),
        ({"images": 5}, TypeError, r"Unsupported image type int \(5\)"),
        ({"text": []}, ValueError, r"class names is empty \(text=\[\]\)"),
        ({"text": ""}, ValueError, r"The class name '' is empty"),
        ({"text": 5}, TypeError, r"a list of class names, got int 5"),
        ({"text": ("cat", None)}, TypeError, r"\(1, 'NoneType'\)"),
        ({"images": [], "text": ["cat"]}, ValueError, r"images=\[\]"),
    ],
)
def test_empty_and_wrong_inputs_name_the_value(processor, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        processor(**kwargs)


@pytest.mark.parametrize("templates", [[], ["no placeholder"], ["{} and {}"], [3]])
def test_bad_templates(processor, templates) -> None:
    with pytest.raises(ValueError, match="template"):
        processor.encode_class_names(["cat"], prompt_templates=templates)
    with pytest.raises(ValueError, match="template"):
        CATSegProcessor(processor.image_processor, processor.tokenizer, prompt_templates=templates)


def test_neither_images_nor_text(processor) -> None:
    with pytest.raises(ValueError, match="Pass `images`"):
        processor()


def test_long_names_are_truncated_with_a_warning(processor, caplog) -> None:
    long_name = " ".join(["enormous"] * 100)
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        out = processor(text=["cat", long_name], return_tensors="pt")
    assert long_name in caplog.text and "truncated" in caplog.text and "cat'" not in caplog.text
    ids, mask = out["input_ids"][1, 0], out["attention_mask"][1, 0]
    assert ids.shape == (77,) and ids[0] == SOT and ids[-1] == EOT and mask.all()
    assert out["input_ids"][0, 0, 0] == SOT
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="catseg_hf.processing_catseg"):
        processor(text=["cat", "dog"])
    assert "truncated" not in caplog.text


def test_return_tensors_default_is_none(processor) -> None:
    out = processor(images=[np.zeros((8, 9, 3), np.uint8)] * 2, text=["cat", "dog"])
    assert isinstance(out["pixel_values"], list) and len(out["pixel_values"]) == 2
    assert out["pixel_values"][0].shape == (5, 3, 384, 384)
    assert isinstance(out["input_ids"], list) and len(out["input_ids"]) == 2 and len(out["input_ids"][0][0]) == 77
    pt = processor(text=["cat", "dog"], return_tensors="pt")
    assert pt["input_ids"].tolist() == out["input_ids"] and pt["attention_mask"].tolist() == out["attention_mask"]


def test_numpy_output(processor) -> None:
    out = processor(images=np.zeros((8, 9, 3), np.uint8), text=["cat"], return_tensors="np")
    assert all(isinstance(v, np.ndarray) for v in out.values())
    assert out["input_ids"].dtype == np.int64 and out["pixel_values"].dtype == np.float32


def test_post_processing_delegates(processor) -> None:
    inputs = processor(images=[np.zeros((30, 40, 3), np.uint8)], text=["a", "b", "c"], return_tensors="pt")
    logits = torch.randn(*inputs["pixel_values"].shape[:2], 3, 24, 24, generator=torch.Generator().manual_seed(0))
    outputs = {"logits": logits}
    maps = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(30, 40)], return_segmentation_scores=True
    )
    expected = processor.image_processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(30, 40)], return_segmentation_scores=True
    )
    assert torch.equal(maps[0].segmentation, expected[0].segmentation) and maps[0].segmentation.shape == (30, 40)
    assert torch.equal(maps[0].segmentation_scores, expected[0].segmentation_scores)


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
        a = loaded(images=image, text=fixture_class_names, return_tensors="pt")
        b = custom(images=image, text=fixture_class_names, return_tensors="pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_saved_folder_loads_as_remote_code_without_catseg_hf(processor, tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    processor.save_pretrained(folder)
    for name in ("processing_catseg.py", "image_processing_catseg.py", "image_inputs_catseg.py", "post_processing_catseg.py"):
        assert (folder / name).is_file(), name
    expected = processor(images=np.full((20, 25, 3), 77, np.uint8), text=["cat", "dog, puppy"], return_tensors="pt")
    logits = torch.randn(1, 5, 2, 24, 24, generator=torch.Generator().manual_seed(0))
    expected["labels"] = processor.image_processor.post_process_semantic_segmentation(logits, target_sizes=[(20, 25)])[0]
    torch.save({**dict(expected), "logits": logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["catseg_hf"] = None  # make any import of the installed package fail
        import numpy as np, torch
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(processor).__name__ == "CATSegProcessor", type(processor)
        assert not type(processor).__module__.startswith("catseg_hf"), type(processor).__module__
        out = processor(images=np.full((20, 25, 3), 77, np.uint8), text=["cat", "dog, puppy"], return_tensors="pt")
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        logits = expected.pop("logits")
        labels = processor.image_processor.post_process_semantic_segmentation(logits, target_sizes=[(20, 25)])[0]
        assert torch.equal(labels, expected.pop("labels"))
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


# ------------------------------------------------------------------------ preprocessing: the processor's, not the config's
def test_config_holds_no_preprocessing_and_old_folders_still_load(tmp_path, bpe_path) -> None:
    """New configs carry only the number of templates; a config.json written when the config held preprocessing
    (the shipped example folder is one) loads, keeps those keys, and `from_model_config` turns them into the
    processor's settings: the one place that reads them."""
    from catseg_hf import CATSegConfig
    from catseg_hf.configuration_catseg import LEGACY_PREPROCESSING_KEYS
    from catseg_hf.testing_utils import tiny_catseg_config

    fresh = tiny_catseg_config().to_dict()
    assert fresh["num_prompt_templates"] == 1 and not set(LEGACY_PREPROCESSING_KEYS) & set(fresh)

    old = tiny_catseg_config().to_dict()
    del old["num_prompt_templates"]
    old.update(
        image_mean=[120.0, 110.0, 100.0], image_std=[60.0, 61.0, 62.0], size_divisibility=8,
        prompt_templates=["a photo of a {}.", "{}"],
    )
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = CATSegConfig.from_pretrained(tmp_path)
    assert config.num_prompt_templates == 2  # the cost embedding's input channels, from the legacy list
    processor = CATSegProcessor.from_model_config(config, bpe_path=bpe_path)
    assert processor.prompt_templates == ["a photo of a {}.", "{}"]
    settings = processor.image_processor
    assert (settings.image_mean, settings.image_std, settings.size_divisibility) == ([120.0, 110.0, 100.0], [60.0, 61.0, 62.0], 8)
    assert settings.clip_resolution == config.clip_resolution
    # Re-saving keeps the legacy keys, so the folder stays what it was.
    config.save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert resaved["prompt_templates"] == ["a photo of a {}.", "{}"] and resaved["size_divisibility"] == 8

    with pytest.raises(ValueError, match="num_prompt_templates=3 but the legacy prompt_templates list has 2"):
        CATSegConfig(num_prompt_templates=3, prompt_templates=["a {}", "{}"])
    # A fresh config with two templates needs the templates from the caller.
    two = tiny_catseg_config(num_prompt_templates=2)
    with pytest.raises(ValueError, match="takes 2 prompt template"):
        CATSegProcessor.from_model_config(two, bpe_path=bpe_path)
    assert CATSegProcessor.from_model_config(two, bpe_path=bpe_path, prompt_templates=["a {}", "{}"]).prompt_templates == ["a {}", "{}"]

    # The shipped example folder is in the current layout: the templates live with the processor only.
    example = Path(__file__).resolve().parents[1] / "examples" / "tiny-shapes-catseg"
    assert "prompt_templates" not in json.loads((example / "config.json").read_text())
    shipped = CATSegConfig.from_pretrained(example)
    assert shipped.num_prompt_templates == len(CATSegProcessor.from_pretrained(example).prompt_templates) == 1
