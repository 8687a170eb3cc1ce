"""The offline CLIP tokenizer: OpenAI's ids, zero padding, truncation, save/load."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from transformers import AutoTokenizer, CLIPTokenizer

from catseg_hf.tokenization import (
    CLIP_NUM_MERGES,
    CLIP_VOCAB_SIZE,
    build_clip_tokenizer,
    clip_byte_symbols,
    load_clip_bpe_merges,
)
from catseg_hf.testing_utils import load_script

SOT, EOT = 49406, 49407
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(bpe_path: Path) -> CLIPTokenizer:
    return build_clip_tokenizer(bpe_path)


def test_vocabulary_layout(tokenizer: CLIPTokenizer) -> None:
    assert isinstance(tokenizer, CLIPTokenizer)
    assert CLIP_VOCAB_SIZE == 49408 and CLIP_NUM_MERGES == 48894
    assert len(tokenizer) == 49408
    vocab = tokenizer.get_vocab()
    symbols = clip_byte_symbols()
    assert len(set(symbols)) == 256
    assert vocab["!"] == 0 and vocab[symbols[255]] == 255 and vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == SOT and vocab["<|endoftext|>"] == EOT
    assert tokenizer.bos_token_id == SOT and tokenizer.eos_token_id == EOT and tokenizer.pad_token_id == 0
    assert tokenizer.model_max_length == 77


def test_openai_ids(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer("a photo of a cat.")["input_ids"] == [SOT, 320, 1125, 539, 320, 2368, 269, EOT]
    # Whitespace is collapsed and case folded, as OpenAI's cleaning does: "bed " and "Bed" tokenise like "bed".
    assert tokenizer("bed ")["input_ids"] == tokenizer("Bed")["input_ids"] == tokenizer("bed")["input_ids"]


def test_fixture_prompts(tokenizer: CLIPTokenizer, official_io, official_tiny_dir: Path) -> None:
    import json

    names = json.loads((official_tiny_dir / "classes.json").read_text())
    prompts = [f"A photo of a {name.split(', ')[0]} in the scene" for name in names]
    encoded = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert encoded["input_ids"].tolist() == official_io["text.token_ids"].tolist()


def test_padding_is_zero_with_zero_mask(tokenizer: CLIPTokenizer) -> None:
    encoded = tokenizer(["a photo of a cat.", "dog"], padding="max_length", max_length=77)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert ids[0][:8] == [SOT, 320, 1125, 539, 320, 2368, 269, EOT] and ids[0][8:] == [0] * 69
    assert mask[0] == [1] * 8 + [0] * 69
    assert ids[1][3:] == [0] * 74 and mask[1] == [1] * 3 + [0] * 74


def test_exclamation_mark_is_not_cut_out_as_padding(tokenizer: CLIPTokenizer) -> None:
    # "!" is the padding token (id 0) but inside text it must keep OpenAI's BPE ids ("!</w>" = 256, "!!</w>" = 748).
    assert tokenizer("hello!")["input_ids"] == [SOT, 3306, 256, EOT]
    assert tokenizer("wow!!")["input_ids"][-2:] == [748, EOT]
    assert 0 not in tokenizer("!!! yes! !")["input_ids"]


def test_truncation_keeps_end_of_text(tokenizer: CLIPTokenizer) -> None:
    encoded = tokenizer(["cat " * 200], padding="max_length", max_length=77, truncation=True)
    ids, mask = encoded["input_ids"][0], encoded["attention_mask"][0]
    assert len(ids) == 77 and ids[0] == SOT and ids[-1] == EOT
    assert ids[1:-1] == [2368] * 75 and mask == [1] * 77
    # Default max length is the model's (77).
    assert len(tokenizer("cat " * 200, truncation=True)["input_ids"]) == 77


def test_save_and_auto_tokenizer_round_trip(tokenizer: CLIPTokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(reloaded, CLIPTokenizer)
    texts = ["a photo of a cat.", "hello! world!!", "A photo of a traffic light in the scene", "x " * 100]
    kwargs = dict(padding="max_length", max_length=77, truncation=True)
    assert reloaded(texts, **kwargs)["input_ids"] == tokenizer(texts, **kwargs)["input_ids"]
    assert reloaded(texts, **kwargs)["attention_mask"] == tokenizer(texts, **kwargs)["attention_mask"]
    assert reloaded.pad_token_id == 0 and len(reloaded) == 49408


def test_plain_text_bpe_file(bpe_path: Path, tmp_path: Path, tokenizer: CLIPTokenizer) -> None:
    plain = tmp_path / "bpe.txt"
    plain.write_bytes(gzip.decompress(bpe_path.read_bytes()))
    from_plain = build_clip_tokenizer(plain)
    assert from_plain.get_vocab() == tokenizer.get_vocab()
    assert from_plain("a photo of a cat.")["input_ids"] == tokenizer("a photo of a cat.")["input_ids"]


def test_bad_bpe_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab"):
        load_clip_bpe_merges(tmp_path / "missing.txt.gz")
    short = tmp_path / "short.txt"
    short.write_text("#version: 0.2\nt h\nth e</w>\n", encoding="utf-8")
    with pytest.raises(ValueError, match="48894"):
        load_clip_bpe_merges(short)
    broken = tmp_path / "broken.txt"
    broken.write_text("#version: 0.2\nt h\nnot-a-merge\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Line 2"):
        load_clip_bpe_merges(broken, num_merges=2)


def test_build_script(bpe_path: Path, tmp_path: Path, capsys) -> None:
    script = REPO_ROOT / "scripts" / "build_clip_tokenizer.py"
    module = load_script(script, "build_clip_tokenizer")
    out_dir = tmp_path / "tok"
    assert module.main(["--bpe", str(bpe_path), "--output", str(out_dir)]) == 0
    assert "49408" in capsys.readouterr().out
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    assert reloaded("a photo of a cat.")["input_ids"] == [SOT, 320, 1125, 539, 320, 2368, 269, EOT]
