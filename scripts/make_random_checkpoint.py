#!/usr/bin/env python
"""Write a random-weight CAT-Seg model folder at the released geometry, for benchmarking without downloads.

    python scripts/make_random_checkpoint.py --variant base --output random-catseg-base [--bpe bpe_simple_vocab_16e6.txt.gz]

The folder is a normal `save_pretrained` folder (safetensors + modelling code). With `--bpe` (default: the shared
fixture's BPE file when present), the processor and CLIP tokenizer are saved too, so the folder works with
`CATSegProcessor`, `pipeline(...)` and `scripts/benchmark.py`. The weights are random: outputs are meaningless,
but every tensor has the released shape, so timings and memory are those of the real model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from catseg_hf import CATSegConfig, CATSegForSemanticSegmentation


def default_bpe_path() -> Path | None:
    shared = Path(os.environ.get("CATSEG_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    candidate = shared / "fixtures" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    return candidate if candidate.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=["base", "large"], default="base")
    parser.add_argument("--output", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bpe", help="CLIP BPE merges file; also save the processor and tokenizer")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = CATSegForSemanticSegmentation(CATSegConfig.from_preset(args.variant)).eval()
    model.save_pretrained(args.output)
    bpe = Path(args.bpe) if args.bpe else default_bpe_path()
    if bpe is not None:
        from catseg_hf import CATSegProcessor

        CATSegProcessor.from_model_config(model.config, bpe_path=bpe).save_pretrained(args.output)
    else:
        print("no BPE file given or found: the folder has no tokenizer (pass --bpe)", file=sys.stderr)
    print(f"saved random {args.variant} model to {args.output} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
