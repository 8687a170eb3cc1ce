"""Build OpenAI's CLIP tokenizer offline, from the BPE merge list shipped with CLIP.

CAT-Seg tokenises its prompts with OpenAI's `simple_tokenizer` (context length 77, zero padding). This module builds
a [`~transformers.CLIPTokenizer`] that gives the same ids from nothing but the merge file
`bpe_simple_vocab_16e6.txt.gz`, so no download from the Hub is needed.

Two things differ from a plain `CLIPTokenizer()`:

- In transformers 5.x the constructor takes the vocabulary and the merges as Python objects (`vocab=`, `merges=`);
  file-path arguments are silently ignored and give a 3-token vocabulary. We therefore rebuild OpenAI's vocabulary
  ourselves, in OpenAI's order, so that the ids match.
- OpenAI's `clip.tokenize` pads with id 0 (the token `"!"`), not with `<|endoftext|>`. We use `"!"` as the padding
  token and set `split_special_tokens=True`: otherwise the tokenizer would register `"!"` as a special token and cut
  every `"!"` out of the input text as id 0, where OpenAI's BPE gives e.g. `"!</w>"` (256) or `"!!</w>"` (748).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

# OpenAI's simple_tokenizer keeps the first 49152 - 256 - 2 merges of the file (after its header line): together with
# the 2 * 256 byte symbols and the 2 special tokens this gives a vocabulary of 49408.
CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 2 * 256 + CLIP_NUM_MERGES + 2
CLIP_CONTEXT_LENGTH = 77
CLIP_BOS_TOKEN = "<|startoftext|>"
CLIP_EOS_TOKEN = "<|endoftext|>"
# Id 0 of the vocabulary; OpenAI's clip.tokenize zero-pads, so padding with this token reproduces its ids.
CLIP_PAD_TOKEN = "!"


def clip_byte_symbols() -> list[str]:
    """The 256 byte-level symbols of GPT-2/CLIP, in the order they take in the vocabulary: transformers' own
    byte-to-unicode table (printable bytes map to themselves and come first, the others follow as 256, 257, ...)."""
    return list(bytes_to_unicode().values())


def load_clip_bpe_merges(bpe_path: str | os.PathLike, num_merges: int = CLIP_NUM_MERGES) -> list[tuple[str, str]]:
    """Reads the merge list of a CLIP BPE file (`.txt.gz` or plain text).

    Args:
        bpe_path (`str | os.PathLike`):
            Path of `bpe_simple_vocab_16e6.txt.gz` (or its decompressed copy).
        num_merges (`int`, *optional*, defaults to `CLIP_NUM_MERGES`):
            How many merges to keep after the header line (OpenAI keeps 48894).

    Returns:
        The merges as `(left, right)` pairs, in priority order.
    """
    path = Path(bpe_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP BPE file not found: {str(path)!r}. Pass the path of OpenAI's `bpe_simple_vocab_16e6.txt.gz` "
            "(gzip-compressed or plain text)."
        )
    raw = path.read_bytes()
    # Decide by content, not by file name: a decompressed copy may keep the .gz suffix and vice versa.
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise ValueError(f"{str(path)!r} is not a UTF-8 CLIP BPE merge list (gzip or plain text): {err}") from err

    # Line 0 is a header ("#version: 0.2" for OpenAI's file); the merges start on line 1.
    merge_lines = lines[1 : num_merges + 1]
    if len(merge_lines) < num_merges:
        raise ValueError(
            f"{str(path)!r} holds {len(merge_lines)} merges after its header line, but the CLIP vocabulary needs "
            f"{num_merges}. Is this OpenAI's full `bpe_simple_vocab_16e6.txt.gz`?"
        )
    merges = []
    for line_number, line in enumerate(merge_lines, start=1):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"Line {line_number} of {str(path)!r} is not a BPE merge (two space-separated symbols): {line!r}."
            )
        merges.append((parts[0], parts[1]))
    return merges


def build_clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """OpenAI's CLIP vocabulary: byte symbols, byte symbols + `</w>`, merged symbols, then SOT and EOT."""
    symbols = clip_byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(pair) for pair in merges]
    tokens += [CLIP_BOS_TOKEN, CLIP_EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(
            "The merge list produces duplicate vocabulary entries; it is not a valid CLIP BPE merge list."
        )
    return vocab


def build_clip_tokenizer(
    bpe_path: str | os.PathLike, model_max_length: int = CLIP_CONTEXT_LENGTH
) -> CLIPTokenizer:
    """Builds a [`~transformers.CLIPTokenizer`] with OpenAI's ids from a CLIP BPE merge file, without downloads.

    The result encodes `"a photo of a cat."` as `49406 320 1125 539 320 2368 269 49407`; padding (e.g.
    `padding="max_length"`) uses id 0 with `attention_mask` 0, as OpenAI's `clip.tokenize` does; `truncation=True`
    truncates to `model_max_length` while keeping `<|endoftext|>` as the last token (OpenAI's code raises instead).
    The tokenizer saves with `save_pretrained` and reloads with `AutoTokenizer.from_pretrained`.

    Args:
        bpe_path (`str | os.PathLike`):
            OpenAI's `bpe_simple_vocab_16e6.txt.gz` (gzip or plain text).
        model_max_length (`int`, *optional*, defaults to `CLIP_CONTEXT_LENGTH`):
            Context length of the CLIP text encoder (77).

    Returns:
        The tokenizer (vocabulary size 49408).

    Note:
        The text normalisation is transformers' CLIP one (NFC, whitespace collapsed, lower case); OpenAI additionally
        runs `ftfy.fix_text` and HTML-unescapes, which only matters for mojibake or HTML entities in the text.
        Literal `<|startoftext|>`/`<|endoftext|>` strings inside the text are tokenised as plain text.
    """
    merges = load_clip_bpe_merges(bpe_path)
    vocab = build_clip_vocab(merges)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=CLIP_EOS_TOKEN,
        bos_token=CLIP_BOS_TOKEN,
        eos_token=CLIP_EOS_TOKEN,
        pad_token=CLIP_PAD_TOKEN,
        # Keeps "!" (the padding token) from being matched as a special token inside the text; see module docstring.
        split_special_tokens=True,
        model_max_length=model_max_length,
    )


__all__ = [
    "CLIP_CONTEXT_LENGTH",
    "CLIP_NUM_MERGES",
    "CLIP_VOCAB_SIZE",
    "build_clip_tokenizer",
    "build_clip_vocab",
    "clip_byte_symbols",
    "load_clip_bpe_merges",
]
