"""Image processor for CAT-Seg: CLIP views of each image, and the sliding-window/whole-image post-processing.

This file must only import torch, numpy, PIL, transformers and (relatively) our own processing files: it is copied
into saved model folders so that they load with `trust_remote_code=True` where `catseg_hf` is not installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging


logger = logging.get_logger(__name__)

# CLIP's normalisation on the 0-255 scale (the official CAT-Seg `clip_pixel_mean` / `clip_pixel_std`).
CLIP_IMAGE_MEAN = [122.7709383, 116.7460125, 104.09373615]
CLIP_IMAGE_STD = [68.5005327, 66.6321579, 70.3231630]
PROCESSING_MODES = ("sliding", "whole")

# Target for the float32 elements of the intermediates of one class chunk in post-processing (about 32 MB): bounded
# memory, and temporaries small enough for glibc to serve from reused heap memory instead of fresh (page-faulting)
# mappings, which made the sliding post-processing of 150 classes 1.4x faster than chunks of 64 classes.
_POSTPROCESS_CHUNK_ELEMENTS = 8 * 1024 * 1024
# Chunks hold a multiple of this many classes, so that every class keeps its position within a vector lane of
# PyTorch's CPU resize kernels (8 or 16 float32 lanes) as in one call over all classes; measured: chunked results
# are bit-identical to unchunked ones (tests/test_image_processing.py).
_POSTPROCESS_CHUNK_ALIGN = 16
_PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class CATSegImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments of [`CATSegImageProcessor`] on top of transformers' `ImagesKwargs`.

    clip_resolution (`int`): side of the square views fed to CLIP.
    size_divisibility (`int`): whole mode pads (bottom/right, with zeros after normalisation) to a multiple of this.
    mode (`str`): `"sliding"` or `"whole"`.
    sliding_canvas_size (`int`): side of the square canvas the image is resized to in sliding mode.
    sliding_tile_size (`int`): side of the sliding-window tiles (and of the global view).
    sliding_stride (`int`): stride of the sliding window.
    """

    clip_resolution: int
    size_divisibility: int
    mode: str
    sliding_canvas_size: int
    sliding_tile_size: int
    sliding_stride: int


class CATSegImageProcessor(BaseImageProcessor):
    r"""
    Turns images into the CLIP views CAT-Seg runs on, and turns CAT-Seg's logits back into segmentation maps.

    Two modes, both following the official implementation operation by operation (float32 torch math):

    - `"sliding"` (default; the protocol of the paper's numbers): the raw 0-255 image is bilinearly resized to a
      `sliding_canvas_size` square canvas, cut into `sliding_tile_size` tiles with stride `sliding_stride` (row-major,
      as `nn.Unfold`), and the raw image resized to `sliding_tile_size` is appended as the last (global) view; every
      view is CLIP-normalised and resized to `clip_resolution`. With the defaults: 4 tiles + 1 global view per image.
    - `"whole"`: the image is CLIP-normalised, zero-padded bottom/right to a multiple of `size_divisibility`, then
      bilinearly resized to `clip_resolution` x `clip_resolution` (aspect ratio not kept). One view per image.

    All resizes are bilinear with `align_corners=False` and no antialiasing.

    Args:
        clip_resolution (`int`, *optional*, defaults to 384):
            Side of the square views fed to CLIP (384 for ViT-B/16, 336 for ViT-L/14@336).
        image_mean (`list[float]`, *optional*, defaults to CLIP's mean on the 0-255 scale):
            Per-channel mean subtracted from the 0-255 pixels.
        image_std (`list[float]`, *optional*, defaults to CLIP's std on the 0-255 scale):
            Per-channel standard deviation the pixels are divided by.
        size_divisibility (`int`, *optional*, defaults to 32):
            Whole mode pads each image to a multiple of this before resizing (0 or 1: no padding).
        mode (`str`, *optional*, defaults to `"sliding"`):
            `"sliding"` or `"whole"`; can be overridden per call.
        sliding_canvas_size (`int`, *optional*, defaults to 640):
            Side of the square canvas of the sliding window.
        sliding_tile_size (`int`, *optional*, defaults to 384):
            Side of the tiles and of the global view.
        sliding_stride (`int`, *optional*, defaults to 256):
            Stride of the tiles (the official `int(384 * (1 - 0.333))`). `canvas - tile` must be a multiple of it.
    """

    # Saved folders carry this file and an `auto_map`, so they load with `trust_remote_code=True` anywhere.
    _auto_class = "AutoImageProcessor"

    model_input_names = ["pixel_values", "original_sizes", "view_layout"]
    valid_kwargs = CATSegImageProcessorKwargs

    def __init__(
        self,
        clip_resolution: int = 384,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        size_divisibility: int = 32,
        mode: str = "sliding",
        sliding_canvas_size: int = 640,
        sliding_tile_size: int = 384,
        sliding_stride: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.clip_resolution = int(clip_resolution)
        self.image_mean = [float(v) for v in (image_mean if image_mean is not None else CLIP_IMAGE_MEAN)]
        self.image_std = [float(v) for v in (image_std if image_std is not None else CLIP_IMAGE_STD)]
        self.size_divisibility = int(size_divisibility)
        self.mode = mode
        self.sliding_canvas_size = int(sliding_canvas_size)
        self.sliding_tile_size = int(sliding_tile_size)
        self.sliding_stride = int(sliding_stride)
        _validate_settings(
            mode=self.mode,
            clip_resolution=self.clip_resolution,
            image_mean=self.image_mean,
            image_std=self.image_std,
            size_divisibility=self.size_divisibility,
            canvas=self.sliding_canvas_size,
            tile=self.sliding_tile_size,
            stride=self.sliding_stride,
        )

    # ------------------------------------------------------------------------------------------------ preprocessing
    def preprocess(
        self,
        images: Any,
        mode: str | None = None,
        clip_resolution: int | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        size_divisibility: int | None = None,
        sliding_canvas_size: int | None = None,
        sliding_tile_size: int | None = None,
        sliding_stride: int | None = None,
        input_data_format: str | None = None,
        return_tensors: str | None = "pt",
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Computes the CLIP views of one image or a list of images.

        Args:
            images: a PIL image, a numpy array or a torch tensor, or a list of them (sizes may differ; each image is
                processed on its own and the views are concatenated). Arrays may be HWC or CHW (`input_data_format`
                settles ambiguous shapes; numpy defaults to HWC, torch to CHW), a 4-D array is a batch. Pixel values
                are on the 0-255 scale: uint8 as is, uint16 (and 16-bit PIL modes) divided by 257, floats and other
                integers taken as 0-255. Grayscale is replicated to 3 channels, alpha is dropped.
            mode: `"sliding"` or `"whole"` (default: `self.mode`).
            clip_resolution, image_mean, image_std, size_divisibility, sliding_canvas_size, sliding_tile_size,
            sliding_stride: per-call overrides of the processor's settings.
            input_data_format: `"channels_first"` or `"channels_last"` for array inputs whose layout is ambiguous.
            return_tensors: `"pt"` (default) or `"np"`.
            device: where to run the arithmetic (default: CPU).

        Returns:
            [`BatchFeature`] with
            - `pixel_values`: float32 `(num_views_total, 3, clip_resolution, clip_resolution)`;
            - `original_sizes`: int64 `(batch, 2)`, the `(height, width)` of each input image;
            - `view_layout`: int64 `(batch, 4)`, `(canvas_height, canvas_width, tile_size, stride)` of each image's
              sliding window, all zeros for an image processed in whole mode.
        """
        if kwargs:
            logger.warning(
                f"CATSegImageProcessor ignores the unknown keyword arguments {sorted(kwargs)}; its settings are "
                "mode, clip_resolution, image_mean, image_std, size_divisibility, sliding_canvas_size, "
                "sliding_tile_size, sliding_stride, input_data_format, return_tensors and device."
            )
        mode = self.mode if mode is None else mode
        clip_resolution = self.clip_resolution if clip_resolution is None else int(clip_resolution)
        image_mean = self.image_mean if image_mean is None else [float(v) for v in image_mean]
        image_std = self.image_std if image_std is None else [float(v) for v in image_std]
        size_divisibility = self.size_divisibility if size_divisibility is None else int(size_divisibility)
        canvas = self.sliding_canvas_size if sliding_canvas_size is None else int(sliding_canvas_size)
        tile = self.sliding_tile_size if sliding_tile_size is None else int(sliding_tile_size)
        stride = self.sliding_stride if sliding_stride is None else int(sliding_stride)
        _validate_settings(mode, clip_resolution, image_mean, image_std, size_divisibility, canvas, tile, stride)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}.")

        image_list = _as_image_list(images)
        if not image_list:
            raise ValueError("No image given: pass a PIL image, a numpy array, a torch tensor, or a non-empty list.")

        compute_device = torch.device(device) if device is not None else torch.device("cpu")
        # torch.tensor(list) in float32, then view(-1, 1, 1): the same values the official code normalises with.
        mean = torch.tensor(image_mean, dtype=torch.float32, device=compute_device).view(-1, 1, 1)
        std = torch.tensor(image_std, dtype=torch.float32, device=compute_device).view(-1, 1, 1)

        views, original_sizes, layouts = [], [], []
        for index, image in enumerate(image_list):
            try:
                pixels = _to_float_chw(image, input_data_format)
            except (TypeError, ValueError) as err:
                raise type(err)(f"Image {index} of the batch: {err}") from err
            pixels = pixels.to(compute_device)
            original_sizes.append(list(pixels.shape[-2:]))
            if mode == "whole":
                views.append(_whole_view(pixels, mean, std, size_divisibility, clip_resolution))
                layouts.append([0, 0, 0, 0])
            else:
                views.append(_sliding_views(pixels, mean, std, canvas, tile, stride, clip_resolution))
                layouts.append([canvas, canvas, tile, stride])
            del pixels  # a 4000x3000 float image is ~140 MB: free it before the next one

        data = {
            "pixel_values": torch.cat(views, dim=0),
            "original_sizes": torch.tensor(original_sizes, dtype=torch.int64),
            "view_layout": torch.tensor(layouts, dtype=torch.int64),
        }
        if return_tensors == "np":
            data = {key: value.cpu().numpy() for key, value in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ---------------------------------------------------------------------------------------------- postprocessing
    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        return_probabilities: bool = False,
    ) -> list[torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Turns CAT-Seg's logits into one label map per image (and optionally per-class probabilities).

        Whole-mode images: sigmoid, then bilinear resize to the target size. Sliding-mode images: the logits of the
        tiles and of the global view are resized to the tile size and passed through a sigmoid; the tiles are folded
        back onto the canvas (overlaps averaged), averaged with the global view resized to the canvas, and the result
        is resized to the target size. The label of a pixel is the arg-max over classes.

        Args:
            outputs: the model output (attribute or key access) with `logits` `(num_views_total, T, h, w)` and, as
                handed back by the model from the processor's outputs, `original_sizes` `(batch, 2)` and
                `view_layout` `(batch, 4)`. Without `original_sizes`/`view_layout` every logits row is treated as a
                whole-mode image. A bare logits tensor is accepted too.
            target_sizes: `(height, width)` per image (a list of pairs or a `(batch, 2)` tensor). Default: the
                original image sizes; without those, the canvas size (sliding) or the logits size (whole).
            return_probabilities: also return the per-class probabilities at the target size.

        Returns:
            A list with one entry per image: an int64 `(height, width)` label map, or with
            `return_probabilities=True` a dict `{"segmentation": (height, width) int64, "probabilities":
            (T, height, width) float32}`.
        """
        logits = _get_field(outputs, "logits")
        if logits is None:
            raise ValueError(
                "post_process_semantic_segmentation needs the model's `logits` (an output object or dict with a "
                "`logits` entry, or the logits tensor itself)."
            )
        if logits.ndim != 4:
            raise ValueError(
                f"logits must be (num_views, num_classes, height, width), got shape {tuple(logits.shape)}."
            )
        original_sizes = _get_field(outputs, "original_sizes")
        view_layout = _get_field(outputs, "view_layout")
        layouts = self._resolve_layouts(logits.shape[0], original_sizes, view_layout)
        num_images = len(layouts)

        if original_sizes is not None:
            original_sizes = _as_size_list(original_sizes, "original_sizes")
            if len(original_sizes) != num_images:
                raise ValueError(
                    f"original_sizes has {len(original_sizes)} rows but view_layout describes {num_images} images."
                )
        if target_sizes is not None:
            target_sizes = _as_size_list(target_sizes, "target_sizes")
            if len(target_sizes) != num_images:
                raise ValueError(
                    f"target_sizes has {len(target_sizes)} entries but the outputs hold {num_images} images "
                    f"({logits.shape[0]} logits rows); pass one (height, width) per image."
                )
        elif original_sizes is not None:
            target_sizes = original_sizes
        else:
            target_sizes = [
                (layout[0], layout[1]) if any(layout) else tuple(logits.shape[-2:]) for layout in layouts
            ]

        results = []
        start = 0
        for index, (layout, target) in enumerate(zip(layouts, target_sizes)):
            num_views = _num_views(layout)
            image_logits = logits[start : start + num_views]
            start += num_views
            input_size = tuple(original_sizes[index]) if original_sizes is not None else None
            results.append(_postprocess_one(image_logits, layout, tuple(target), return_probabilities, input_size))
        return results

    def _resolve_layouts(
        self, num_rows: int, original_sizes: Any, view_layout: Any
    ) -> list[tuple[int, int, int, int]]:
        """One `(canvas_h, canvas_w, tile, stride)` per image (zeros = whole), checked against the logits rows."""
        if view_layout is None:
            if original_sizes is not None and len(original_sizes) != num_rows:
                raise ValueError(
                    f"The outputs have original_sizes for {len(original_sizes)} images but {num_rows} logits rows and "
                    "no view_layout; pass the processor's `view_layout` through the model (it hands it back on its "
                    "outputs) so that sliding-window views can be told apart."
                )
            return [(0, 0, 0, 0)] * num_rows
        layouts = [tuple(int(v) for v in row) for row in _as_int_rows(view_layout, "view_layout", 4)]
        for layout in layouts:
            if any(layout):
                canvas_h, canvas_w, tile, stride = layout
                if min(layout) <= 0 or tile > min(canvas_h, canvas_w) or (canvas_h - tile) % stride or (
                    canvas_w - tile
                ) % stride:
                    raise ValueError(
                        f"Invalid view_layout row {list(layout)}: expected (canvas_h, canvas_w, tile, stride) with "
                        "tile <= canvas and (canvas - tile) a multiple of stride, or all zeros for whole mode."
                    )
        expected = sum(_num_views(layout) for layout in layouts)
        if expected != num_rows:
            raise ValueError(
                f"view_layout describes {expected} views but logits has {num_rows} rows; pass the logits and the "
                "view_layout/original_sizes of the same processor call."
            )
        return layouts


# ==================================================================================================== helpers
def _validate_settings(
    mode: str,
    clip_resolution: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    size_divisibility: int,
    canvas: int,
    tile: int,
    stride: int,
) -> None:
    if mode not in PROCESSING_MODES:
        raise ValueError(f"mode must be one of {PROCESSING_MODES}, got {mode!r}.")
    if clip_resolution <= 0:
        raise ValueError(f"clip_resolution must be positive, got {clip_resolution}.")
    if len(image_mean) != 3 or len(image_std) != 3:
        raise ValueError(f"image_mean and image_std need 3 values (RGB), got {list(image_mean)} and {list(image_std)}.")
    if min(image_std) <= 0:
        raise ValueError(f"image_std values must be positive, got {list(image_std)}.")
    if size_divisibility < 0:
        raise ValueError(f"size_divisibility must be >= 0 (0 or 1: no padding), got {size_divisibility}.")
    if mode == "sliding":
        if min(canvas, tile, stride) <= 0 or tile > canvas:
            raise ValueError(
                f"Sliding window needs positive sizes with tile <= canvas, got canvas {canvas}, tile {tile}, "
                f"stride {stride}."
            )
        if (canvas - tile) % stride:
            raise ValueError(
                f"Sliding window: (canvas - tile) = {canvas - tile} is not a multiple of the stride {stride}, so the "
                "tiles would not cover the canvas; change sliding_canvas_size, sliding_tile_size or sliding_stride."
            )


def _as_image_list(images: Any) -> list[Any]:
    """A flat list of single images; 4-D arrays/tensors are batches."""
    if isinstance(images, (list, tuple)):
        flat = []
        for item in images:
            flat.extend(_as_image_list(item))
        return flat
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def _channels_first(shape: Sequence[int], prefer_first: bool, input_data_format: Any) -> bool:
    """Whether a 3-D array is CHW, from `input_data_format` or, failing that, from its shape."""
    if input_data_format is not None:
        fmt = getattr(input_data_format, "value", input_data_format)
        if fmt not in ("channels_first", "channels_last"):
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}."
            )
        return fmt == "channels_first"
    first_ok, last_ok = shape[0] in (1, 2, 3, 4), shape[-1] in (1, 2, 3, 4)
    if first_ok and last_ok:
        return prefer_first
    if first_ok or last_ok:
        return first_ok
    raise ValueError(
        f"Cannot find the channel axis of an image of shape {tuple(shape)}: expected 1, 2, 3 or 4 channels first "
        "(C, H, W) or last (H, W, C)."
    )


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image as an (H, W) or (H, W, C) array on the 0-255 scale (float for 16-bit data)."""
    mode = image.mode
    if mode in _PIL_16BIT_MODES:
        return np.asarray(image).astype(np.float32) / np.float32(257.0)
    if mode == "I":
        # 32-bit integer mode: what older Pillow gives for 16-bit PNGs. Only the 16-bit range is meaningful here.
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(
                f"PIL mode 'I' image with values in [{array.min()}, {array.max()}]: only 16-bit data (0-65535) is "
                "supported; convert it to 8-bit RGB or to a float 0-255 array first."
            )
        return array.astype(np.float32) / np.float32(257.0)
    if mode in ("RGB", "RGBA", "L", "LA", "F"):
        return np.asarray(image)
    if mode == "P":
        # Palette images with transparency convert cleanly only to RGBA; the alpha is dropped later.
        return np.asarray(image.convert("RGBA" if "transparency" in image.info else "RGB"))
    if mode in ("1", "La"):
        return np.asarray(image.convert("L"))
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as err:
        raise ValueError(f"Unsupported PIL image mode {mode!r}: convert the image to 'RGB' first ({err}).") from err


def _to_float_chw(image: Any, input_data_format: Any = None) -> torch.Tensor:
    """One image as a float32 (3, H, W) CPU tensor on the 0-255 scale."""
    # Only caller-provided float data is checked for a 0-1 scale; 16-bit inputs become floats here legitimately.
    is_float_input = (isinstance(image, np.ndarray) and image.dtype.kind == "f") or (
        isinstance(image, torch.Tensor) and image.is_floating_point()
    )
    if isinstance(image, (Image.Image, np.ndarray)):
        array = _pil_to_array(image) if isinstance(image, Image.Image) else image
        if not array.dtype.isnative:  # torch cannot wrap byte-swapped buffers (e.g. big-endian 16-bit data)
            array = array.astype(array.dtype.newbyteorder("="))
        if array.dtype == np.uint16:
            array = array.astype(np.float32) / np.float32(257.0)
        elif array.dtype == np.bool_:
            array = array.astype(np.float32) * np.float32(255.0)
        elif array.dtype.kind not in "uif":
            raise TypeError(f"Unsupported numpy image dtype {array.dtype}: use uint8, uint16 or float (0-255).")
        if not array.flags.writeable:
            # torch warns about read-only buffers (np.asarray of a PIL image is one); we never write, but copy to
            # keep the caller's output clean (a uint8 copy is cheap next to the float32 one made below).
            array = array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        prefer_first = False
    elif isinstance(image, torch.Tensor):
        tensor = image.detach()
        if tensor.dtype == torch.uint16:
            tensor = tensor.to(torch.float32) / 257.0
        elif tensor.dtype == torch.bool:
            tensor = tensor.to(torch.float32) * 255.0
        elif tensor.is_complex():
            raise TypeError(f"Unsupported torch image dtype {tensor.dtype}: use uint8 or float (0-255).")
        prefer_first = True
    else:
        raise TypeError(
            f"Unsupported image type {type(image).__name__}: pass PIL images, numpy arrays or torch tensors."
        )

    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim == 3:
        if not _channels_first(tuple(tensor.shape), prefer_first, input_data_format):
            tensor = tensor.permute(2, 0, 1)
    else:
        raise ValueError(
            f"An image must have 2 or 3 dimensions (a 4-D input is a batch), got shape {tuple(tensor.shape)}."
        )
    if tensor.shape[-2] == 0 or tensor.shape[-1] == 0:
        raise ValueError(f"Empty image of shape {tuple(tensor.shape)}.")

    channels = tensor.shape[0]
    if channels in (1, 2):  # grayscale (+ alpha): replicate the gray channel
        tensor = tensor[:1].expand(3, -1, -1)
    elif channels == 4:  # RGBA: drop alpha
        tensor = tensor[:3]
    elif channels != 3:
        raise ValueError(f"An image needs 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA) channels, got {channels}.")
    tensor = tensor.to(dtype=torch.float32)
    if is_float_input and tensor.numel() > 1 and 0.0 < float(tensor.max()) <= 1.0:
        logger.warning_once(
            "A float image has all its values in [0, 1], but CATSegImageProcessor expects pixels on the 0-255 scale "
            "(as the official model). Multiply such images by 255 before processing them."
        )
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    return tensor


def _whole_view(
    pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, size_divisibility: int, clip_resolution: int
) -> torch.Tensor:
    """Official non-sliding path: normalise, zero-pad bottom/right to a multiple, resize to the CLIP resolution."""
    normalised = (pixels - mean) / std
    height, width = normalised.shape[-2:]
    if size_divisibility > 1:
        padded_h = math.ceil(height / size_divisibility) * size_divisibility
        padded_w = math.ceil(width / size_divisibility) * size_divisibility
        # Padding after normalisation: the padded area is 0 in normalised space, as in detectron2's ImageList.
        normalised = F.pad(normalised, (0, padded_w - width, 0, padded_h - height), value=0.0)
    return F.interpolate(
        normalised.unsqueeze(0), size=(clip_resolution, clip_resolution), mode="bilinear", align_corners=False
    )


def _sliding_views(
    pixels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    canvas: int,
    tile: int,
    stride: int,
    clip_resolution: int,
) -> torch.Tensor:
    """Official sliding-window path: tiles of the resized canvas (nn.Unfold order) plus the global view, last."""
    batch = pixels.unsqueeze(0)
    canvas_image = F.interpolate(batch, size=(canvas, canvas), mode="bilinear", align_corners=False)[0]
    # Row-major tile order, the order of nn.Unfold's L axis; slicing copies the same values unfold would.
    tiles = [
        canvas_image[:, top : top + tile, left : left + tile]
        for top in range(0, canvas - tile + 1, stride)
        for left in range(0, canvas - tile + 1, stride)
    ]
    global_view = F.interpolate(batch, size=(tile, tile), mode="bilinear", align_corners=False)
    views = torch.cat([torch.stack(tiles), global_view], dim=0)
    views = (views - mean) / std
    # A same-size bilinear resize is an exact copy (384 for ViT-B); 336 for ViT-L.
    return F.interpolate(views, size=(clip_resolution, clip_resolution), mode="bilinear", align_corners=False)


def _num_views(layout: Sequence[int]) -> int:
    """Views per image: 1 in whole mode (all-zero layout), tiles + 1 global view in sliding mode."""
    if not any(layout):
        return 1
    canvas_h, canvas_w, tile, stride = layout
    return ((canvas_h - tile) // stride + 1) * ((canvas_w - tile) // stride + 1) + 1


def _get_field(outputs: Any, name: str) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs if name == "logits" else None
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def _as_int_rows(value: Any, name: str, width: int) -> list[list[int]]:
    rows = value.tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else value
    try:
        rows = [[int(v) for v in row] for row in rows]
    except TypeError:
        rows = None
    if rows is None or any(len(row) != width for row in rows):
        raise ValueError(
            f"{name} must hold {width} integers per image (one row per image, e.g. [[480, 640]] for one image's "
            f"(height, width)), got {value!r}."
        )
    return rows


def _as_size_list(value: Any, name: str) -> list[tuple[int, int]]:
    sizes = [tuple(row) for row in _as_int_rows(value, name, 2)]
    if any(min(size) <= 0 for size in sizes):
        raise ValueError(f"{name} must hold positive (height, width) pairs, got {sizes}.")
    return sizes


def _fold_tiles(
    tile_map: Callable[[int], torch.Tensor], num_channels: int, canvas_h: int, canvas_w: int, tile: int, stride: int
) -> torch.Tensor:
    """The tiles `tile_map(index)` `(C, tile, tile)` (row-major origins) summed onto a `(C, canvas_h, canvas_w)`
    canvas, each tile made only when it is added.

    The same sums as `F.fold` over the tiles' flattened columns, added in fold's order (at every pixel the tile with
    the later origin first), so the result is bit-identical; fold's strided column reads made it take two thirds of
    the sliding post-processing."""
    origins = [
        (top, left)
        for top in range(0, canvas_h - tile + 1, stride)
        for left in range(0, canvas_w - tile + 1, stride)
    ]
    canvas = None
    for index in reversed(range(len(origins))):
        top, left = origins[index]
        values = tile_map(index)
        if canvas is None:
            canvas = values.new_zeros(num_channels, canvas_h, canvas_w)
        canvas[:, top : top + tile, left : left + tile] += values
    return canvas


def _postprocess_one(
    logits: torch.Tensor,
    layout: Sequence[int],
    target: tuple[int, int],
    return_probabilities: bool,
    input_size: tuple[int, int] | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Probabilities at the target size for one image, computed in chunks of classes (every step is per class).

    Classes whose logits are one constant over all views and pixels (those a top-k model dropped everywhere) share
    one probability map, computed once; the arg-max over them is resolved exactly, ties to the lowest class id.

    In whole mode the official post-processing first crops the probability map to the (unpadded) input size; that
    is a no-op unless the input image is smaller than the logits map, and is reproduced here via `input_size`."""
    num_classes = logits.shape[1]
    sliding = any(layout)
    if sliding:
        canvas_h, canvas_w, tile, stride = layout
        num_tiles = _num_views(layout) - 1
        per_class = tile * tile + canvas_h * canvas_w * 2 + target[0] * target[1] * 2
        # The overlap count of every canvas pixel, as the official fold(unfold(ones)).
        ones = torch.ones(1, tile, tile, dtype=torch.float32, device=logits.device)
        counts = _fold_tiles(lambda index: ones, 1, canvas_h, canvas_w, tile, stride)
    else:
        per_class = logits.shape[-2] * logits.shape[-1] + target[0] * target[1] * 2
    chunk = _POSTPROCESS_CHUNK_ELEMENTS // per_class // _POSTPROCESS_CHUNK_ALIGN * _POSTPROCESS_CHUNK_ALIGN
    chunk = max(_POSTPROCESS_CHUNK_ALIGN, chunk)

    def to_probabilities(class_ids: torch.Tensor) -> torch.Tensor:
        chunk_logits = logits.index_select(1, class_ids).float()
        if sliding:
            # In-place ops below compute the same values as the official out-of-place expressions, with less memory.
            # View by view (the resize treats every view and class alone, so this is bit-identical to one call):
            # the resized views are the largest temporaries of post-processing.
            def view_probabilities(view: int) -> torch.Tensor:
                resized = F.interpolate(
                    chunk_logits[view : view + 1], size=(tile, tile), mode="bilinear", align_corners=False
                )
                return resized.sigmoid_()[0]

            merged = _fold_tiles(view_probabilities, len(class_ids), canvas_h, canvas_w, tile, stride)
            global_probs = F.interpolate(
                view_probabilities(num_tiles).unsqueeze(0), size=(canvas_h, canvas_w), mode="bilinear", align_corners=False
            )
            # (tiles summed / overlap count + global) / 2, in this order.
            merged = merged.div_(counts).unsqueeze(0).add_(global_probs).div_(2.0)
            del global_probs
        else:
            merged = chunk_logits.sigmoid()
            if input_size is not None:
                merged = merged[..., : input_size[0], : input_size[1]]
        return F.interpolate(merged, size=target, mode="bilinear", align_corners=False)[0]

    lowest = logits.amin(dim=(0, 2, 3))
    constant = lowest == logits.amax(dim=(0, 2, 3))
    varying_ids = (~constant).nonzero().flatten()
    probabilities = (
        torch.empty(num_classes, *target, dtype=torch.float32, device=logits.device) if return_probabilities else None
    )
    best_value = best_index = None
    for first in range(0, varying_ids.numel(), chunk):
        class_ids = varying_ids[first : first + chunk]
        chunk_probs = to_probabilities(class_ids)
        if probabilities is not None:
            probabilities[class_ids] = chunk_probs
            continue
        # Running arg-max over ascending class ids; a later chunk wins only when strictly greater, so ties keep the
        # lowest class id exactly as one torch.argmax over all classes would.
        value, index = chunk_probs.max(dim=0)
        index = class_ids[index]
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index, best_index)
        del chunk_probs

    for constant_value in torch.unique(lowest[constant]):
        class_ids = (constant & (lowest == constant_value)).nonzero().flatten()
        shared = to_probabilities(class_ids[:1])
        if probabilities is not None:
            probabilities[class_ids] = shared
            continue
        value, index = shared[0], class_ids[0]
        if best_value is None:
            best_value, best_index = value, index.expand(value.shape).clone()
        else:
            better = value > best_value
            tied_lower = (value == best_value) & (index < best_index)
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better | tied_lower, index, best_index)

    if probabilities is not None:
        return {"segmentation": probabilities.argmax(dim=0), "probabilities": probabilities}
    return best_index


__all__ = ["CATSegImageProcessor", "CLIP_IMAGE_MEAN", "CLIP_IMAGE_STD", "PROCESSING_MODES"]
