"""Entry point and argument parser of the `catseg-hf` command (the commands themselves are in `catseg_hf.cli`).

This module lives outside the `catseg_hf` package on purpose: importing `catseg_hf` registers CAT-Seg with
transformers' Auto classes, which loads torch and transformers (seconds). Python imports a package before any of its
modules, so a parser inside the package could not answer `catseg-hf --help` or a mistyped option before torch is
loaded. Here the arguments are parsed with the standard library only; `catseg_hf.cli` is imported once they are valid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "catseg-hf"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `catseg-hf` (sub-commands `segment` and `demo`)."""
    parser = argparse.ArgumentParser(prog=PROG, description="CAT-Seg open-vocabulary semantic segmentation.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_segment(commands)
    _add_demo(commands)
    return parser


def _add_segment(commands: argparse._SubParsersAction) -> None:
    segment = commands.add_parser(
        "segment",
        help="label every pixel of images with one of the given class names",
        description=(
            "Segment images into the given classes. For each image, writes NAME_labels.png (class ids), "
            "NAME_overlay.png (colours and a legend) and NAME.json (pixel fraction of each class present) into --out."
        ),
        epilog=(
            "Output names: NAME is the image's file name without extension; when two images share one, or when an "
            "output name is taken by an input file, -2, -3, ... is appended (and said). Inputs are never "
            "overwritten; other files already in --out only with --overwrite. "
            "--labels is split on commas, so it cannot express a class with synonyms such as 'sofa, couch' (the "
            "text encoder uses the first synonym; the name is kept whole in the outputs): write such names in a "
            "--labels-file, one class per line or as a JSON list."
        ),
    )
    segment.add_argument(
        "images", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or directories (their image files, sorted)"
    )
    labels = segment.add_mutually_exclusive_group()
    labels.add_argument(
        "--labels",
        help='comma-separated class names, e.g. "wall,floor,sofa" (with neither --labels nor --labels-file: the '
        "model's default vocabulary, if it stores one)",
    )
    labels.add_argument(
        "--labels-file",
        type=Path,
        metavar="FILE",
        help="class names: a JSON list of strings, or one name per line (blank lines skipped)",
    )
    segment.add_argument(
        "--model", required=True, metavar="DIR_OR_HUB_ID", help="a converted CAT-Seg folder or Hub repository"
    )
    segment.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created if needed)")
    segment.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files already in --out that have an output's name (input files are never replaced)",
    )
    segment.add_argument(
        "--mode",
        choices=("sliding", "whole"),
        default=None,
        help="sliding window (the paper's protocol) or one whole-image view (faster); default: the processor's",
    )
    _add_device(segment)
    segment.add_argument(
        "--prompt-template",
        action="append",
        dest="prompt_templates",
        metavar="T",
        help="a prompt template with one {} for the class name (repeatable; default: the model's)",
    )
    _add_trust_remote_code(segment)
    segment.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    segment.set_defaults(handler="segment")


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="start the web demo (upload an image, type class names, see the segmentation)",
        description=(
            "Start the Gradio web demo on http://HOST:PORT. Needs the demo extra: pip install 'catseg-hf[demo]'. "
            "With no --model it runs the tiny example model of the repository (synthetic shapes only; real images "
            "need converted official weights)."
        ),
    )
    demo.add_argument(
        "--model",
        default=None,
        metavar="DIR_OR_HUB_ID",
        help="a converted CAT-Seg folder or Hub repository (default: the tiny example model, offline)",
    )
    demo.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)"
    )
    demo.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    _add_device(demo)
    _add_trust_remote_code(demo)
    demo.set_defaults(handler="demo")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available, else cpu"
    )


def _add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the modelling code stored in the model folder instead of the installed catseg_hf",
    )


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1-65535)")
    return port


def model_reference_problem(model_id: str) -> str | None:
    """Why `model_id` cannot name a model, as far as can be told without loading anything; None if it may load.

    A local folder must hold a `config.json`; a path (absolute, relative to `.` or `~`, or deeper than `owner/name`)
    must exist. Any other name is a Hub id: in offline mode (`HF_HUB_OFFLINE=1`) it must be in the local Hub cache, so
    that a mistyped folder name is reported at once, as a missing folder *and* a failed Hub lookup.
    """
    local = Path(model_id).expanduser()
    if local.is_file():
        return f"--model {model_id!r} is a file; give a model folder (with config.json) or a Hub id."
    if local.is_dir():
        if not (local / "config.json").is_file():
            return (
                f"the folder {model_id!r} has no config.json, so it is not a model folder; convert a checkpoint with "
                "scripts/convert_official_checkpoint.py."
            )
        return None
    path_like = local.is_absolute() or model_id.startswith((".", "~")) or model_id.count("/") > 1 or "\\" in model_id
    if path_like:
        return f"the model folder {model_id!r} does not exist (and it is a path, not a Hub repository id)."
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    missing = f"no local folder of that name exists (in {Path.cwd()})"
    try:
        cached = try_to_load_from_cache(model_id, "config.json")
    except HFValidationError as error:
        return f"cannot load the model {model_id!r}: {missing}, and it is not a valid Hub repository id ({error})"
    if constants.HF_HUB_OFFLINE and not isinstance(cached, str):
        return (
            f"cannot load the model {model_id!r}: {missing}, and the Hub lookup failed (offline mode, "
            "HF_HUB_OFFLINE=1: it is not in the local Hub cache)."
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `catseg-hf` command; returns the exit code (0 success, 1 some image failed, 2 error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    problem = model_reference_problem(args.model) if args.model is not None else None
    if problem is not None:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    # Only now: this loads torch and transformers.
    from catseg_hf.cli import run_command

    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
