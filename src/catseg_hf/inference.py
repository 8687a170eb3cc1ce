"""The inference front end: images and a class vocabulary in, one label map per image out.

One path serves every front end (the pipelines, the CLI, the evaluation runner, the web demo):

1. `load_image`: a file or URL opened with the processor's rules (16-bit and palette modes kept for the processor);
2. `prepare_images`: the processor's CLIP views, one row per image, and each image's `(height, width)`;
3. `predict_logits`: the model on those views with the vocabulary's class embeddings (the text side ran once, when
   the [`~catseg_hf.vocabulary.Vocabulary`] was built);
4. `to_label_maps`: the processor's post-processing to each image's size.

`segment` chains them. transformers' pipelines split the same steps over `preprocess` / `_forward` / `postprocess`
so that their own batching runs in between.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .image_inputs_catseg import _channels_first
from .vocabulary import Vocabulary


def load_image(image: Any, timeout: float | None = None) -> Any:
    """An image as the CATSeg image processor takes it.

    Local paths are opened with PIL, EXIF orientation applied, keeping their mode (16-bit and palette images are
    converted by the image processor's own rules); HTTP(S) URLs are fetched by transformers' `load_image` (as RGB);
    PIL images and arrays are returned as they are.

    Raises:
        FileNotFoundError: for a path that is no file.
        TypeError: for anything that is no image.
    """
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        if image.startswith(("http://", "https://")):
            from transformers.image_utils import load_image as load_image_url

            return load_image_url(image, timeout=timeout)
        if not os.path.isfile(image):
            raise FileNotFoundError(f"No image file {image!r}: give an existing path, an HTTP(S) URL or a PIL image.")
        with Image.open(image) as opened:
            loaded = ImageOps.exif_transpose(opened)
            loaded.load()
        return loaded
    if isinstance(image, (Image.Image, np.ndarray, torch.Tensor)):
        return image
    raise TypeError(
        f"Cannot segment an input of type {type(image).__name__}: give a local path, an HTTP(S) URL, a PIL image, "
        "or a numpy array / torch tensor on the 0-255 scale."
    )


def image_size(image: Image.Image | np.ndarray | torch.Tensor) -> tuple[int, int]:
    """`(height, width)` of one image, reading the channel axis of arrays as the image processor does."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    shape = tuple(image.shape)
    if len(shape) == 2:
        return shape
    if len(shape) != 3:
        raise ValueError(f"An image must have 2 or 3 dimensions (a 4-D input is a batch), got shape {shape}.")
    channels_first = _channels_first(shape, isinstance(image, torch.Tensor), None)
    return (shape[1], shape[2]) if channels_first else (shape[0], shape[1])


def resolve_device(name: str | torch.device) -> torch.device:
    """Where to run: `"auto"` (cuda when available, else cpu), `"cpu"`, `"cuda"` or a `torch.device`.

    Raises:
        ValueError: for another name, or `"cuda"` without a CUDA device.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("cuda: no CUDA device is available; use cpu (or auto)")
    return torch.device(name)


def prepare_images(processor: Any, images: Sequence[Any], mode: str | None = None) -> tuple[torch.Tensor, list]:
    """The processor's `pixel_values` for `images` (one row per image: `(N, 3, R, R)` whole, `(N, V, 3, R, R)`
    sliding) and the `(height, width)` of every image."""
    images = list(images)
    pixel_values = processor.image_processor(images, mode=mode, return_tensors="pt")["pixel_values"]
    return pixel_values, [image_size(image) for image in images]


def predict_logits(model: Any, pixel_values: torch.Tensor, class_embeddings: torch.Tensor | None) -> torch.Tensor:
    """The model's logits for prepared views, without gradients, on the model's device and dtype, with the class
    embeddings of a [`~catseg_hf.vocabulary.Vocabulary`] (`None`: the model's default vocabulary)."""
    with torch.inference_mode():
        outputs = model(pixel_values=pixel_values.to(model.device, model.dtype), class_embeddings=class_embeddings)
    return outputs.logits


def to_label_maps(
    processor: Any,
    logits: torch.Tensor,
    image_sizes: Sequence[Sequence[int]],
    target_sizes: Sequence[Sequence[int]] | None = None,
) -> list[torch.Tensor]:
    """One int64 label map per image, at `target_sizes` (default: each image's own size). The image sizes also drive
    the official whole-mode crop of the probability map."""
    sizes = [tuple(int(side) for side in size) for size in image_sizes]
    targets = sizes if target_sizes is None else [tuple(int(side) for side in size) for size in target_sizes]
    return processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=targets, image_sizes=sizes)


def segment(
    model: Any,
    processor: Any,
    images: Any,
    vocabulary: Vocabulary | None,
    mode: str | None = None,
    target_sizes: Sequence[Sequence[int]] | None = None,
) -> list[torch.Tensor]:
    """Label maps of one or several images (paths, URLs, PIL images or arrays; any sizes) in one model call.

    Args:
        model (`Any`):
            A CAT-Seg model (eval mode).
        processor (`Any`):
            Its `CATSegProcessor`.
        images (`Any`):
            One image or a list of images.
        vocabulary ([`~catseg_hf.vocabulary.Vocabulary`]):
            The classes, embedded once; `None`: the model's default
            vocabulary.
        mode (`str`, *optional*):
            `"sliding"` or `"whole"` (default: the processor's).
        target_sizes (`list[tuple[int, int]]`, *optional*):
            Output sizes (default: each image's size).

    Returns:
        One int64 `(height, width)` map of class ids per image.
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    loaded = [load_image(image) for image in images]
    pixel_values, sizes = prepare_images(processor, loaded, mode)
    logits = predict_logits(model, pixel_values, None if vocabulary is None else vocabulary.class_embeddings)
    return to_label_maps(processor, logits, sizes, target_sizes)


__all__ = ["image_size", "load_image", "predict_logits", "prepare_images", "resolve_device", "segment", "to_label_maps"]
