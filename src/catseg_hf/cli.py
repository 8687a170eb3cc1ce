"""The `catseg-hf` command line.

```bash
catseg-hf segment room.jpg photos/ --labels "wall,floor,sofa,lamp" --model catseg-base --out results
catseg-hf demo --model catseg-base          # the web demo on http://127.0.0.1:7860
```

`segment` writes, for every image, into `--out`:

- `NAME_labels.png`: the label map, one class id per pixel (indices into the label list; 8-bit, or 16-bit with more
  than 255 classes);
- `NAME_overlay.png`: the image with the classes painted over it, and a legend of the classes present;
- `NAME.json`: the fraction of the pixels of each class present, and the model, labels and mode used.

`NAME` is the image's file name without extension. `-2`, `-3`, ... is appended when two inputs share one, or when an
output name is taken by an input file (the command says so): inputs are never overwritten, and other files already in
`--out` only with `--overwrite`.

The argument parser lives in the top-level module `catseg_hf_cli` (the console script's entry point), so that
`catseg-hf --help` answers before torch loads; this module holds the commands. The same entry point runs as
`python -m catseg_hf.cli`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from catseg_hf_cli import PROG, build_parser, main, model_reference_problem

from .inference import load_image, predict_logits, prepare_images, to_label_maps
from .inference import resolve_device as inference_device
from .messages import one_line as _one_line
from .pipelines import default_vocabulary
from .visualization import class_fractions, draw_overlay, label_map_image, palette
from .vocabulary import Vocabulary


IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# The three files written for an image NAME: NAME + each suffix.
OUTPUT_SUFFIXES = {"label_map": "_labels.png", "overlay": "_overlay.png", "record": ".json"}


class CommandError(Exception):
    """An error that ends the command with a one-line message (exit code 2)."""


class ImageError(Exception):
    """An error with one image: reported on one line, and the command goes on with the other images."""


# ---------------------------------------------------------------------------------------------------- arguments
def parse_labels(labels: str | None, labels_file: Path | None) -> list[str] | None:
    """The class names from `--labels` (comma-separated) or `--labels-file`; None when neither is given.

    Raises:
        CommandError: unreadable or malformed file, or no class name at all.
    """
    if labels is not None:
        names = [name.strip() for name in labels.split(",")]
        names = [name for name in names if name]
        if not names:
            raise CommandError(f'--labels {labels!r} holds no class name; give e.g. --labels "wall,floor,sofa".')
        return names
    if labels_file is None:
        return None
    try:
        text = labels_file.read_text(encoding="utf-8-sig")  # -sig: files saved with a BOM by some editors
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"cannot read --labels-file {str(labels_file)!r}: {_one_line(error)}") from error
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as error:
            raise CommandError(f"--labels-file {str(labels_file)!r} is not valid JSON: {error}") from error
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise CommandError(f"--labels-file {str(labels_file)!r}: the JSON must be a list of strings.")
    else:
        names = [line.strip() for line in text.splitlines()]
        names = [name for name in names if name]
    if not names:
        raise CommandError(f"--labels-file {str(labels_file)!r} holds no class name.")
    return names


def expand_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Image files of the command line: files as given, directories expanded to their image files (sorted by name,
    not recursive). Returns the files and one error message per argument that gives no image."""
    files: list[Path] = []
    errors: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                (child for child in path.iterdir() if child.is_file() and child.suffix.lower() in IMAGE_EXTENSIONS),
                key=lambda child: child.name,
            )
            if not found:
                errors.append(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or directory")
    return files, errors


# ---------------------------------------------------------------------------------------------------- output names
@dataclass(frozen=True)
class OutputPlan:
    """Where the results of one input image go."""

    image: Path
    name: str
    files: dict[str, Path]  # "label_map", "overlay", "record" -> path in --out
    note: str | None = None  # why `name` is not the image's plain file name, if it is not


def plan_outputs(images: Sequence[Path], out: Path, overwrite: bool = False) -> list[OutputPlan]:
    """The output files of every image, decided before any is written.

    An image `x.png` writes `x_labels.png`, `x_overlay.png` and `x.json`. Its name becomes `x-2`, `x-3`, ... (with a
    note saying why) when an earlier image of the run took the name (compared case-insensitively, for file systems
    that ignore case) or when one of its outputs would be an input file (e.g. an input `x_labels.png`): inputs are
    never overwritten.

    Raises:
        CommandError: when outputs would replace files already in `out` (other than inputs, which are avoided) and
            `overwrite` is not set; the message names them.
    """
    inputs = {_identity(path) for path in images}
    used: set[str] = set()
    plans = []
    for image in images:
        stem = image.stem
        name, number, reasons = stem, 1, []
        while True:
            files = {kind: out / f"{name}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}
            if name.lower() in used:
                reasons.append(f"another image of this run is named {name!r}")
            else:
                taken = [path for path in files.values() if _identity(path) in inputs]
                if not taken:
                    break
                reasons.append(f"{taken[0]} is an input")
            number += 1
            name = f"{stem}-{number}"
        used.add(name.lower())
        note = None
        if reasons:
            note = f"writing its results as {name}_labels.png, {name}_overlay.png and {name}.json ({reasons[0]})"
        plans.append(OutputPlan(image=image, name=name, files=files, note=note))

    if not overwrite:
        existing = [path for plan in plans for path in plan.files.values() if path.exists() or path.is_symlink()]
        if existing:
            listed = ", ".join(str(path) for path in existing[:3]) + (
                f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            )
            raise CommandError(
                f"{len(existing)} output file(s) already exist: {listed}. Pass --overwrite to replace them (input "
                "files are never replaced), or choose another --out."
            )
    return plans


def _identity(path: Path) -> str:
    # The resolved path (symbolic links followed), lower-cased: a clash on a case-insensitive file system is treated
    # as a clash everywhere, which at worst renames an output needlessly.
    return os.path.normcase(str(path.resolve())).lower()


# ---------------------------------------------------------------------------------------------------- segment
def segment_command(args: argparse.Namespace) -> int:
    """Runs `catseg-hf segment`; returns the exit code (0, or 1 when an image failed)."""
    # The cheap checks first, so that a typo does not wait for the model to load.
    labels = parse_labels(args.labels, args.labels_file)
    images, input_errors = expand_inputs(args.images)
    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {str(args.out)!r} is a file, not a directory.")
    plans = plan_outputs(images, args.out, overwrite=args.overwrite)
    device = resolve_device(args.device)
    model, processor = load_model(args.model, trust_remote_code=args.trust_remote_code, device=device)
    if labels is None:
        # A model folder with a default vocabulary (catseg_hf.pipelines.set_default_vocabulary) needs no labels.
        try:
            labels = default_vocabulary(model.config)
        except ValueError as error:
            raise CommandError(_one_line(error)) from error
        if not labels:
            raise CommandError(
                f"give the classes with --labels \"a,b,c\" or --labels-file FILE (the model {args.model!r} stores "
                "no default vocabulary)."
            )
    templates = list(args.prompt_templates) if args.prompt_templates else list(processor.prompt_templates)
    expected = model.config.num_prompt_templates
    if len(templates) != expected:
        raise CommandError(
            f"the model was built for {expected} prompt template(s) per class, got {len(templates)} "
            f"({templates}); give --prompt-template {expected} time(s), or none to use the model's."
        )
    mode = args.mode or processor.image_processor.mode

    # The class-name embeddings are computed once and shared by all images.
    try:
        vocabulary = Vocabulary.encode(model, processor, labels, prompt_templates=templates)
    except (TypeError, ValueError) as error:
        raise CommandError(_one_line(error)) from error

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create the output directory {str(args.out)!r}: {_one_line(error)}") from error

    for message in input_errors:
        _report(message)
    for plan in plans:
        if plan.note and not args.quiet:
            tqdm.write(f"{PROG}: note: {plan.image}: {plan.note}", file=sys.stderr)
    failures = len(input_errors)
    succeeded = 0
    # disable=None: tqdm draws the bar on terminals only, not into logs and pipes.
    show_progress = not args.quiet and len(plans) > 1
    for plan in tqdm(plans, desc="Segmenting", unit="image", disable=None if show_progress else True):
        try:
            _segment_one(plan, model, processor, vocabulary, templates, mode, args.model, device)
            succeeded += 1
        except ImageError as error:
            _report(f"{plan.image}: {error}")
            failures += 1
    if not args.quiet:
        summary = f"Segmented {succeeded} of {len(images)} image(s) into {args.out}"
        print(summary + (f"; {failures} error(s)." if failures else "."))
    return 1 if failures else 0


def _segment_one(
    plan: OutputPlan,
    model: Any,
    processor: Any,
    vocabulary: Vocabulary,
    templates: list[str],
    mode: str,
    model_id: str,
    device: torch.device,
) -> None:
    image = _read_image(plan.image)
    labels = list(vocabulary.class_names)
    try:
        pixel_values, sizes = prepare_images(processor, [image], mode)
    except (TypeError, ValueError) as error:
        raise ImageError(f"cannot process the image ({_one_line(error)})") from error
    try:
        logits = predict_logits(model, pixel_values, vocabulary.class_embeddings)
        label_map = to_label_maps(processor, logits, sizes)[0].cpu().numpy()
    except torch.OutOfMemoryError as error:
        raise ImageError(
            f"out of memory ({image.width}x{image.height} image, {len(labels)} classes); try --mode whole, fewer "
            "classes or --device cpu"
        ) from error

    names = {kind: path.name for kind, path in plan.files.items() if kind != "record"}
    record = {
        "image": str(plan.image),
        "image_size": [image.height, image.width],
        "model": model_id,
        "mode": mode,
        "prompt_templates": templates,
        "labels": labels,
        **names,
        "fractions": class_fractions(label_map, labels),
    }
    try:
        label_map_image(label_map, len(labels)).save(plan.files["label_map"])
        draw_overlay(image, label_map, labels).save(plan.files["overlay"])
        with open(plan.files["record"], "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    except OSError as error:
        folder = str(plan.files["record"].parent)
        raise ImageError(f"cannot write the results into {folder!r}: {_one_line(error)}") from error


def _read_image(path: Path) -> Image.Image:
    """The image as the processor reads it (EXIF orientation applied, mode kept: 16-bit data is not clipped)."""
    try:
        return load_image(path)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot read the image ({_one_line(error)})") from error


# ---------------------------------------------------------------------------------------------------- demo
def demo_command(args: argparse.Namespace) -> int:
    """Runs `catseg-hf demo`: the Gradio web demo, until interrupted."""
    try:
        from . import demo
    except ImportError as error:
        raise CommandError(
            f"the demo needs gradio ({_one_line(error)}); install it with: pip install 'catseg-hf[demo]'"
        ) from error
    device = resolve_device(args.device)
    model_id = args.model
    if model_id is None:
        model_id = demo.default_model_path()
        if model_id is None:
            raise CommandError(
                "no --model given, and the tiny example model (examples/tiny-shapes-catseg of the catseg-hf "
                "repository) is not beside this installation; give --model DIR_OR_HUB_ID."
            )
    model, processor = load_model(str(model_id), trust_remote_code=args.trust_remote_code, device=device)
    app = demo.build_demo(model, processor, model_name=str(args.model or model_id), is_example_model=args.model is None)
    try:
        demo.launch(app, host=args.host, port=args.port)
    except OSError as error:
        raise CommandError(f"cannot serve on {args.host}:{args.port}: {_one_line(error)}") from error
    return 0


# ---------------------------------------------------------------------------------------------------- shared
def load_model(model_id: str, trust_remote_code: bool = False, device: torch.device | str = "cpu") -> tuple[Any, Any]:
    """The CAT-Seg model (eval mode, on `device`) and processor of a local folder or Hub repository.

    A name that is not a local folder is looked up on the Hub; if that fails, the message says both (no local folder
    of that name, and why the Hub lookup failed), so that a mistyped path is not reported as a Hub problem only.

    Raises:
        CommandError: the model cannot be loaded, or is not a CAT-Seg model.
    """
    # catseg_hf (imported with this module) registers the "catseg" type with the Auto classes, so CAT-Seg folders
    # load with the installed code; the code copied into a folder runs only with --trust-remote-code.
    from transformers import AutoModel, AutoProcessor

    problem = model_reference_problem(model_id)
    if problem is not None:
        raise CommandError(problem)
    local = Path(model_id).expanduser()
    if not local.is_dir() and not _hub_offline():
        # Without network, the Hub client retries for half a minute: say what is going on meanwhile.
        print(f"{PROG}: no local folder {model_id!r}; looking it up on the Hub ...", file=sys.stderr)
    try:
        model = AutoModel.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        if local.is_dir():
            raise CommandError(f"cannot load the model folder {model_id!r}: {_one_line(error)}") from error
        raise CommandError(
            f"cannot load the model {model_id!r}: no local folder of that name exists (in {Path.cwd()}), and the "
            f"Hub lookup failed{_offline_note()}: {_one_line(error)}"
        ) from error
    if not hasattr(model, "get_class_embeddings") or not hasattr(processor, "encode_class_names"):
        raise CommandError(
            f"{model_id!r} is not a CAT-Seg model folder (got {type(model).__name__} and {type(processor).__name__}); "
            "convert a checkpoint with scripts/convert_official_checkpoint.py."
        )
    return model.to(device).eval(), processor


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _offline_note() -> str:
    return " (offline mode, HF_HUB_OFFLINE=1: only the local cache was searched)" if _hub_offline() else ""


def resolve_device(name: str) -> torch.device:
    """`auto` (cuda when available, else cpu), `cpu` or `cuda` as a torch device (see `catseg_hf.inference`)."""
    try:
        return inference_device(name)
    except ValueError as error:
        raise CommandError(f"--device {_one_line(error)}") from error


def _report(message: str) -> None:
    # tqdm.write keeps the message on its own line while a progress bar is drawn.
    tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------- entry point
COMMANDS = {"segment": segment_command, "demo": demo_command}


def run_command(args: argparse.Namespace) -> int:
    """Runs the command of parsed arguments (see `catseg_hf_cli.main`); returns the exit code."""
    try:
        return COMMANDS[args.handler](args)
    except CommandError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


__all__ = [
    "CommandError",
    "ImageError",
    "OutputPlan",
    "build_parser",
    "expand_inputs",
    "load_model",
    "main",
    "palette",
    "parse_labels",
    "plan_outputs",
    "resolve_device",
    "run_command",
]


if __name__ == "__main__":
    sys.exit(main())
