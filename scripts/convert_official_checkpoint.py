#!/usr/bin/env python
"""Convert an official CAT-Seg checkpoint (detectron2 `.pth` or `.safetensors`) into a transformers model folder.

    python scripts/convert_official_checkpoint.py --checkpoint model_base.pth --output catseg-base --variant base \
        [--official-config config.json] [--bpe bpe_simple_vocab_16e6.txt.gz] [--overwrite]

The folder holds `config.json`, `model.safetensors`, the modelling code (so it loads with `trust_remote_code=True`
where catseg_hf is not installed) and a model card as `README.md` (`catseg_hf.conversion.model_card`), ready for `push_to_hub`. With `--bpe`, the image
processor and the CLIP tokenizer are saved too, so the folder is complete for `CATSegProcessor`, `AutoProcessor`
and `pipeline(...)`.

Every argument is checked before the checkpoint is read; the folder is written next to `--output` and moved into
place once complete, so a failed run leaves nothing there. A non-empty `--output` is refused unless `--overwrite`
(which replaces the whole folder, once the new one is complete). Errors are one line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="official .pth (detectron2) or .safetensors file")
    parser.add_argument("--output", required=True, help="folder to write (must not exist, or be empty)")
    parser.add_argument("--variant", choices=["base", "large"], help="preset for non-inferable hyperparameters")
    parser.add_argument("--official-config", help="official config JSON (the fixtures' config.json format)")
    parser.add_argument("--bpe", help="CLIP BPE merges file (bpe_simple_vocab_16e6.txt.gz): also save the processor")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty --output folder (once the new one is complete)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Imported after parsing, so that --help and argument errors do not wait for torch and transformers.
    from catseg_hf.conversion import ConversionError, convert_official_checkpoint
    from catseg_hf.conversion.model_card import model_card_for

    try:
        model = convert_official_checkpoint(
            args.checkpoint,
            output_dir=args.output,
            variant=args.variant,
            official_config=args.official_config,
            model_card=lambda config: model_card_for(config, args.variant),
            bpe_path=args.bpe,
            overwrite=args.overwrite,
        )
    except ConversionError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted; nothing was written to {args.output!r}", file=sys.stderr)
        return 130
    except Exception as error:  # not a known bad input: still one line, the output is cleaned up all the same
        print(
            f"error: the conversion failed unexpectedly ({type(error).__name__}: {_one_line(error)}); nothing was "
            f"written to {args.output!r}. Please report this with the command line.",
            file=sys.stderr,
        )
        return 1
    print(f"saved {args.output} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
