#!/usr/bin/env python
"""Write OpenAI's CLIP tokenizer (as a transformers `CLIPTokenizer`) from its BPE merge file, offline.

Example:
    python scripts/build_clip_tokenizer.py --bpe bpe_simple_vocab_16e6.txt.gz --output ./clip_tokenizer

The output folder loads with `transformers.AutoTokenizer.from_pretrained(output)`.
"""

from __future__ import annotations

import argparse
import sys

from catseg_hf.tokenization import CLIP_CONTEXT_LENGTH, build_clip_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bpe", required=True, help="OpenAI's bpe_simple_vocab_16e6.txt.gz (gzip or plain text).")
    parser.add_argument("--output", required=True, help="Folder to write the tokenizer files to (created if needed).")
    parser.add_argument(
        "--model-max-length", type=int, default=CLIP_CONTEXT_LENGTH, help="Context length (default: %(default)s)."
    )
    args = parser.parse_args(argv)

    tokenizer = build_clip_tokenizer(args.bpe, model_max_length=args.model_max_length)
    files = tokenizer.save_pretrained(args.output)
    print(f"CLIP tokenizer (vocabulary {len(tokenizer)}) written to {args.output}:")
    for name in files:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
