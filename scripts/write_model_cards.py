#!/usr/bin/env python
"""Write the released models' cards `model_cards/catseg-base.md` and `model_cards/catseg-large.md`.

    python scripts/write_model_cards.py [--output model_cards]

The cards are built by `catseg_hf.conversion.model_card.released_model_card` (the converter writes the same card into
a converted folder); run this after changing that function or the benchmark registry's reported numbers.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from catseg_hf.conversion.model_card import MODEL_CARDS_DIR, write_model_cards

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(MODEL_CARDS_DIR), help="folder to write the cards into")
    args = parser.parse_args(argv)
    for path in write_model_cards(args.output):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
