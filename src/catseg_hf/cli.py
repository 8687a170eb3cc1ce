"""The `catseg-hf` command line.

```bash
catseg-hf segment room.jpg photos/ --labels "wall,floor,sofa,lamp" --model catseg-base --out results
```

For every image it writes, into `--out`:

- `NAME_labels.png`: the label map, one class id per pixel (indices into the label list; 8-bit, or 16-bit with more
  than 255 classes);
- `NAME_overlay.png`: the image with the classes painted over it, and a legend of the classes present;
- `NAME.json`: the fraction of the pixels of each class present, and the model, labels and mode used.

`NAME` is the image's file name without extension (`-2`, `-3`, ... is appended when two inputs share one).
The same entry point runs as `python -m catseg_hf.cli`.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm
from transformers import AutoModel, AutoProcessor

from .pipelines import default_vocabulary, load_image
from .vocabulary import Vocabulary

PROG = "catseg-hf"
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
OVERLAY_ALPHA = 0.5
# Class names longer than this are shortened in the overlay legend (the JSON keeps them whole).
LEGEND_MAX_NAME_CHARS = 40


class CommandError(Exception):
    """An error that ends the command with a one-line message (exit code 2)."""


class ImageError(Exception):
    """An error with one image: reported on one line, and the command goes on with the other images."""


# ---------------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `catseg-hf` (sub-command `segment`)."""
    parser = argparse.ArgumentParser(prog=PROG, description="CAT-Seg open-vocabulary semantic segmentation.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    segment = commands.add_parser(
        "segment",
        help="label every pixel of images with one of the given class names",
        description=(
            "Segment images into the given classes. For each image, writes NAME_labels.png (class ids), "
            "NAME_overlay.png (colours and a legend) and NAME.json (pixel fraction of each class present) into --out."
        ),
        epilog=(
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
        "--mode",
        choices=("sliding", "whole"),
        default=None,
        help="sliding window (the paper's protocol) or one whole-image view (faster); default: the processor's",
    )
    segment.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available, else cpu"
    )
    segment.add_argument(
        "--prompt-template",
        action="append",
        dest="prompt_templates",
        metavar="T",
        help="a prompt template with one {} for the class name (repeatable; default: the model's)",
    )
    segment.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the modelling code stored in the model folder instead of the installed catseg_hf",
    )
    segment.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    segment.set_defaults(handler=segment_command)
    return parser


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


# ---------------------------------------------------------------------------------------------------- drawing
def palette(num_classes: int) -> np.ndarray:
    """A deterministic colour per class id, `(num_classes, 3)` uint8.

    Hues step by the golden angle, so that neighbouring ids (often related classes) get distant hues and no two of
    the first few hundred classes look alike; saturation and brightness alternate to separate close hues further.
    """
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    colours = np.empty((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        hue = (index * golden) % 1.0
        saturation = (0.85, 0.6, 0.95)[index % 3]
        value = (0.95, 0.8, 0.65)[(index // 3) % 3]
        red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
        colours[index] = (round(red * 255), round(green * 255), round(blue * 255))
    return colours


def label_map_image(label_map: np.ndarray, num_classes: int) -> Image.Image:
    """The label map as a PNG-ready image: 8-bit ("L") for up to 255 classes, 16-bit ("I;16") above.

    255 is left out of the 8-bit range on purpose: it is the usual "ignore" id of segmentation datasets.
    """
    if num_classes > 65536:
        raise CommandError(f"{num_classes} classes do not fit a 16-bit label map; use at most 65536 classes.")
    dtype = np.uint16 if num_classes > 255 else np.uint8
    return Image.fromarray(np.ascontiguousarray(label_map.astype(dtype)))


def class_fractions(label_map: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Fraction of the pixels of each class present, `{name: fraction}` in class-id order."""
    counts = np.bincount(label_map.reshape(-1), minlength=len(labels))
    total = int(label_map.size)
    return {labels[index]: int(count) / total for index, count in enumerate(counts) if count}


def draw_overlay(image: Image.Image, label_map: np.ndarray, labels: Sequence[str]) -> Image.Image:
    """The image with each pixel's class colour blended in, over a legend of the classes present.

    The legend lists the classes present in class-id order (colour swatch, name, percentage of the pixels), in as
    many columns as fit the image width, drawn with PIL's default font.
    """
    colours = palette(len(labels))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = pixels * (1.0 - OVERLAY_ALPHA) + colours[label_map].astype(np.float32) * OVERLAY_ALPHA
    overlay = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))

    fractions = class_fractions(label_map, labels)
    ids = {name: index for index, name in enumerate(labels)}
    entries = [(ids[name], f"{_shorten(name)} ({100.0 * fraction:.1f}%)") for name, fraction in fractions.items()]

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_height = max(1, measure.textbbox((0, 0), "Ag", font=font)[3])
    row_height = text_height + 8
    swatch = text_height
    margin, gap = 8, 16
    widths = [swatch + 6 + int(measure.textlength(text, font=font)) for _, text in entries]
    column_width = max(widths) + gap
    width = max(overlay.width, column_width + 2 * margin)
    columns = max(1, min(len(entries), (width - 2 * margin) // column_width))
    rows = math.ceil(len(entries) / columns)

    canvas = Image.new("RGB", (width, overlay.height + rows * row_height + 2 * margin), "white")
    canvas.paste(overlay, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for position, (class_id, text) in enumerate(entries):
        # Column-major, so the legend reads down like a list.
        column, row = divmod(position, rows)
        left = margin + column * column_width
        top = overlay.height + margin + row * row_height
        colour = tuple(int(c) for c in colours[class_id])
        draw.rectangle((left, top, left + swatch, top + swatch), fill=colour, outline=(0, 0, 0))
        draw.text((left + swatch + 6, top), text, fill=(0, 0, 0), font=font)
    return canvas


def _shorten(name: str) -> str:
    return name if len(name) <= LEGEND_MAX_NAME_CHARS else name[: LEGEND_MAX_NAME_CHARS - 3] + "..."


# ---------------------------------------------------------------------------------------------------- segment
def segment_command(args: argparse.Namespace) -> int:
    """Runs `catseg-hf segment`; returns the exit code (0, or 1 when an image failed)."""
    # The cheap checks first, so that a typo does not wait for the model to load.
    labels = parse_labels(args.labels, args.labels_file)
    images, input_errors = expand_inputs(args.images)
    device = _resolve_device(args.device)
    model, processor = _load_model(args.model, args.trust_remote_code, device)
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
    failures = len(input_errors)
    succeeded = 0
    used_names: set[str] = set()
    # disable=None: tqdm draws the bar on terminals only, not into logs and pipes.
    show_progress = not args.quiet and len(images) > 1
    for path in tqdm(images, desc="Segmenting", unit="image", disable=None if show_progress else True):
        name = _unique_name(path.stem, used_names)
        try:
            _segment_one(path, name, model, processor, vocabulary, templates, mode, args.model, args.out, device)
            succeeded += 1
        except ImageError as error:
            _report(f"{path}: {error}")
            failures += 1
    if not args.quiet:
        summary = f"Segmented {succeeded} of {len(images)} image(s) into {args.out}"
        print(summary + (f"; {failures} error(s)." if failures else "."))
    return 1 if failures else 0


def _segment_one(
    path: Path,
    name: str,
    model: Any,
    processor: Any,
    vocabulary: Vocabulary,
    templates: list[str],
    mode: str,
    model_id: str,
    out: Path,
    device: torch.device,
) -> None:
    image = _read_image(path)
    labels = list(vocabulary.class_names)
    size = (image.height, image.width)
    inputs = processor.image_processor(image, mode=mode, return_tensors="pt")
    try:
        with torch.inference_mode():
            outputs = model(pixel_values=inputs["pixel_values"].to(device), class_embeddings=vocabulary.class_embeddings)
            label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[size], image_sizes=[size])
            label_map = label_map[0].cpu().numpy()
    except torch.OutOfMemoryError as error:
        raise ImageError(
            f"out of memory ({image.width}x{image.height} image, {len(labels)} classes); try --mode whole, fewer "
            "classes or --device cpu"
        ) from error

    files = {"label_map": f"{name}_labels.png", "overlay": f"{name}_overlay.png"}
    record = {
        "image": str(path),
        "image_size": [image.height, image.width],
        "model": model_id,
        "mode": mode,
        "prompt_templates": templates,
        "labels": labels,
        **files,
        "fractions": class_fractions(label_map, labels),
    }
    try:
        label_map_image(label_map, len(labels)).save(out / files["label_map"])
        draw_overlay(image, label_map, labels).save(out / files["overlay"])
        with open(out / f"{name}.json", "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    except OSError as error:
        raise ImageError(f"cannot write the results into {str(out)!r}: {_one_line(error)}") from error


def _read_image(path: Path) -> Image.Image:
    """The image as the processor reads it (EXIF orientation applied, mode kept: 16-bit data is not clipped)."""
    try:
        return load_image(path)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot read the image ({_one_line(error)})") from error


def _load_model(model_id: str, trust_remote_code: bool, device: torch.device) -> tuple[Any, Any]:
    # catseg_hf (imported with this module) registers the "catseg" type with the Auto classes, so CAT-Seg folders
    # load with the installed code; the code copied into a folder runs only with --trust-remote-code.
    local = Path(model_id).expanduser()
    if (local.is_absolute() or model_id.startswith((".", "~"))) and not local.is_dir():
        # transformers would report a missing local folder as an invalid Hub repository id.
        raise CommandError(f"the model folder {model_id!r} does not exist.")
    try:
        model = AutoModel.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"cannot load the model {model_id!r}: {_one_line(error)}") from error
    if not hasattr(model, "get_class_embeddings") or not hasattr(processor, "encode_class_names"):
        raise CommandError(
            f"{model_id!r} is not a CAT-Seg model folder (got {type(model).__name__} and {type(processor).__name__}); "
            "convert a checkpoint with scripts/convert_official_checkpoint.py."
        )
    return model.to(device).eval(), processor


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA device is available; use --device cpu (or auto).")
    return torch.device(name)


def _unique_name(stem: str, used: set[str]) -> str:
    """`stem`, or `stem-2`, `stem-3`, ... if an earlier image of this run took it (case-insensitively, for file
    systems that ignore case)."""
    candidate, number = stem, 1
    while candidate.lower() in used:
        number += 1
        candidate = f"{stem}-{number}"
    used.add(candidate.lower())
    return candidate


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _report(message: str) -> None:
    # tqdm.write keeps the message on its own line while a progress bar is drawn.
    tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `catseg-hf` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except CommandError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
