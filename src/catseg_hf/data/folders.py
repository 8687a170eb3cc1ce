"""Image/mask folder pairs: list files, pair them by stem, and build a lazy `datasets.Dataset` of their paths."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from collections.abc import Iterable, Sequence

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "pair_files_by_stem", "load_image_mask_folders"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff")


def _list_files(directory: Path, extensions: Iterable[str], recursive: bool) -> dict[str, Path]:
    """Map stem -> path of files with one of `extensions` (case-insensitive)."""
    extensions = tuple(e.lower() for e in extensions)
    found: dict[str, Path] = {}
    duplicates = []
    if recursive:
        candidates = (p for p in directory.rglob("*") if p.is_file())
    else:
        # os.scandir reports file types from the directory listing itself: no per-file stat,
        # which matters for 118k COCO images. Only names are read, never file contents.
        with os.scandir(directory) as entries:
            candidates = [Path(e.path) for e in entries if e.is_file()]
    for path in sorted(candidates):
        if path.suffix.lower() in extensions:
            stem = str(path.relative_to(directory).with_suffix("")) if recursive else path.stem
            if stem in found:
                duplicates.append(stem)
            found[stem] = path
    if duplicates:
        raise ValueError(
            f"Several files in {directory} share the stem(s) {sorted(set(duplicates))[:10]} (different "
            "extensions), so images and masks cannot be paired unambiguously. Remove the duplicates."
        )
    return found


def pair_files_by_stem(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    *,
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    mask_extensions: Sequence[str] = MASK_EXTENSIONS,
    on_unmatched: str = "error",
    recursive: bool = False,
) -> tuple[list[str], list[str]]:
    """Pair images with masks that have the same file stem; returns absolute paths, sorted.

    Args:
        on_unmatched (`str`, *optional*, defaults to `"error"`):
            `"error"` (default) raises, listing the unmatched stems;
            `"skip_images"` drops images without a mask (for layouts whose image folder is a
            superset, like VOC's `JPEGImages`) but still raises for masks without an image;
            `"skip"` drops unmatched files on both sides with a warning.
        recursive (`bool`, *optional*, defaults to `False`):
            Pair by path relative to the folders (sub-folders allowed).
    """
    if on_unmatched not in ("error", "skip", "skip_images"):
        raise ValueError(f"on_unmatched must be 'error', 'skip' or 'skip_images', got {on_unmatched!r}.")
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for name, directory in (("image", image_dir), ("mask", mask_dir)):
        if not directory.is_dir():
            raise FileNotFoundError(f"The {name} folder {str(directory)!r} does not exist or is not a directory.")
    images = _list_files(image_dir, image_extensions, recursive)
    masks = _list_files(mask_dir, mask_extensions, recursive)
    if not images:
        raise FileNotFoundError(f"No images with extensions {tuple(image_extensions)} found in {image_dir}.")
    if not masks:
        raise FileNotFoundError(f"No masks with extensions {tuple(mask_extensions)} found in {mask_dir}.")
    images_without_mask = sorted(set(images) - set(masks))
    masks_without_image = sorted(set(masks) - set(images))

    def _show(stems):
        head = ", ".join(stems[:20])
        return head + (f", ... ({len(stems)} in total)" if len(stems) > 20 else "")

    problems = []
    if images_without_mask and on_unmatched == "error":
        problems.append(f"{len(images_without_mask)} image(s) in {image_dir} have no mask: {_show(images_without_mask)}")
    if masks_without_image and on_unmatched in ("error", "skip_images"):
        problems.append(f"{len(masks_without_image)} mask(s) in {mask_dir} have no image: {_show(masks_without_image)}")
    if problems:
        raise ValueError(
            "Images and masks are paired by file stem, and some files have no partner.\n  "
            + "\n  ".join(problems)
            + "\nFix the folders, or pass on_unmatched='skip' to drop unpaired files."
        )
    if on_unmatched == "skip" and (images_without_mask or masks_without_image):
        logger.warning(
            "Skipping %d image(s) without mask and %d mask(s) without image.",
            len(images_without_mask),
            len(masks_without_image),
        )
    stems = sorted(set(images) & set(masks))
    return [str(images[s].resolve()) for s in stems], [str(masks[s].resolve()) for s in stems]


def load_image_mask_folders(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    *,
    on_unmatched: str = "error",
    recursive: bool = False,
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    mask_extensions: Sequence[str] = MASK_EXTENSIONS,
):
    """A [`datasets.Dataset`] of (image, mask) file paths cast to `datasets.Image()`.

    Only the paths are stored, so building the dataset reads no pixel data and decoding
    happens when an example is accessed. Masks are decoded as stored (16-bit masks stay 16-bit).
    """
    import datasets

    image_paths, mask_paths = pair_files_by_stem(
        image_dir,
        mask_dir,
        image_extensions=image_extensions,
        mask_extensions=mask_extensions,
        on_unmatched=on_unmatched,
        recursive=recursive,
    )
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    # Image features encode a str as {"path": str, "bytes": None}: nothing is opened here.
    return datasets.Dataset.from_dict({"image": image_paths, "label": mask_paths}, features=features)
