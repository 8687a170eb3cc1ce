"""Reading the images given to CAT-Seg's image processor into one float32 `(C, H, W)` tensor on the 0-255 scale.

PIL images (16-bit and palette modes, band by band), numpy arrays and torch tensors, with the channel axis, size
limit and finite-value checks.

This file must only import torch, numpy, PIL and transformers: it is copied into saved model folders next to
`image_processing_catseg.py` (which imports it relatively), so that they load with `trust_remote_code=True` where
`catseg_hf` is not installed.
"""

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.utils import logging


logger = logging.get_logger(__name__)

_PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Images are converted to float32 this many pixels at a time where the input allows it (PIL images, band by band),
# so that no full-resolution temporary besides the float32 image itself is made.
_LOAD_BAND_PIXELS = 4 * 1024 * 1024
# Default of `max_image_pixels`: a float32 RGB copy of an image this large is 1.2 GB. PIL's own decompression-bomb
# limit (89 megapixels warns, 179 refuse) protects only images loaded through PIL; this one protects the arrays.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


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


def _short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters, for naming a bad argument in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pil_band_array(band: Image.Image) -> tuple[np.ndarray, float | None]:
    """Rows of a PIL image as an (h, W) or (h, W, C) array, and what to divide its values by to reach 0-255.

    Every conversion here is per pixel, so converting the image band by band gives what converting it whole would.
    """
    mode = band.mode
    if mode in _PIL_16BIT_MODES:
        return np.asarray(band), 257.0
    if mode == "I":
        # 32-bit integer mode: what older Pillow gives for 16-bit PNGs. Only the 16-bit range is meaningful here.
        array = np.asarray(band)
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"PIL mode 'I' image with values in [{low}, {high}]: only 16-bit data (0-65535) is supported; "
                "convert it to 8-bit RGB or to a float 0-255 array first."
            )
        return array, 257.0
    if mode in ("RGB", "RGBA", "L", "LA", "F"):
        return np.asarray(band), None
    if mode == "P":
        # Palette images with transparency convert cleanly only to RGBA; the alpha is dropped later.
        return np.asarray(band.convert("RGBA" if "transparency" in band.info else "RGB")), None
    if mode == "PA":
        return np.asarray(band.convert("RGBA")), None
    if mode == "1":
        return np.asarray(band.convert("L")), None
    if mode == "La":
        # Premultiplied alpha: "LA" undoes the premultiplication (as "RGBa" -> "RGB" does), then alpha is dropped.
        return np.asarray(band.convert("LA")), None
    try:
        return np.asarray(band.convert("RGB")), None
    except (ValueError, OSError) as err:
        raise ValueError(f"Unsupported PIL image mode {mode!r}: convert the image to 'RGB' first ({err}).") from err


def _pil_bands(image: Image.Image) -> Iterator[tuple[int, np.ndarray, float | None]]:
    """A PIL image band by band: (first row, array (h, W[, C]), divisor), so that no full-size copy but the float32
    one is made; an image of up to `_LOAD_BAND_PIXELS` is one band, without a crop."""
    width, height = image.size
    band_rows = max(1, _LOAD_BAND_PIXELS // width)
    if band_rows >= height:
        yield (0, *_pil_band_array(image))
        return
    for top in range(0, height, band_rows):
        # PIL pads a crop box that goes beyond the image, so the last box ends at the last row.
        yield (top, *_pil_band_array(image.crop((0, top, width, min(top + band_rows, height)))))


def _check_image_pixels(height: int, width: int, max_pixels: int) -> None:
    if max_pixels and height * width > max_pixels:
        raise ValueError(
            f"The image is {width}x{height} pixels ({height * width / 1e6:.1f} megapixels), above the limit of "
            f"max_image_pixels={max_pixels} ({max_pixels / 1e6:g} megapixels): processing it would hold a float32 "
            f"copy of it at full resolution (about {12 * height * width / 2**30:.1f} GiB for RGB). Downscale it "
            "first (CAT-Seg sees it at 640x640 in sliding mode and at the CLIP resolution in whole mode), or raise "
            "the limit (`max_image_pixels=...` on the processor or per call; 0: no limit)."
        )


def _load_image(
    image: Any,
    input_data_format: Any = None,
    convert_rgb: bool = True,
    max_pixels: int = 0,
    size_divisibility: int = 0,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image as a float32 `(C, H', W')` tensor on the 0-255 scale, and its `(height, width)`.

    C = 3 with `convert_rgb`, else as given. `H', W'` are the height and width rounded up to a multiple of
    `size_divisibility` (> 1), the padding filled with zeros; otherwise the image's own. The tensor is on the CPU, or
    on the device of a torch input.

    The pixels are written straight into that one float32 tensor (PIL images band by band), so that the only
    full-resolution copy made is the float32 one: peak memory is about 4 bytes per kept channel and pixel, plus the
    input. Float inputs are checked for NaN and infinite values, in one pass without temporaries.
    """
    if isinstance(image, Image.Image):
        width, height = image.size
        _check_image_pixels(height, width, max_pixels)
        if height == 0 or width == 0:
            raise ValueError(f"Empty PIL image of size {width}x{height}.")
        bands = _pil_bands(image)
        channels_first = False
        is_float = image.mode == "F"
        multiplier = None
    elif isinstance(image, np.ndarray):
        if image.dtype.kind not in "buif":
            raise TypeError(f"Unsupported numpy image dtype {image.dtype}: use uint8, uint16 or float (0-255).")
        channels_first = image.ndim == 3 and _channels_first(image.shape, False, input_data_format)
        # 16-bit in either byte order (the cast below reads big-endian data as well).
        divisor = 257.0 if image.dtype.kind == "u" and image.dtype.itemsize == 2 else None
        bands = iter([(0, image, divisor)])
        is_float = image.dtype.kind == "f"
        multiplier = 255.0 if image.dtype == np.bool_ else None
    elif isinstance(image, torch.Tensor):
        if image.is_complex():
            raise TypeError(f"Unsupported torch image dtype {image.dtype}: use uint8 or float (0-255).")
        channels_first = image.ndim == 3 and _channels_first(tuple(image.shape), True, input_data_format)
        divisor = 257.0 if image.dtype == torch.uint16 else None
        bands = iter([(0, image.detach(), divisor)])
        is_float = image.is_floating_point()
        multiplier = 255.0 if image.dtype == torch.bool else None
    else:
        raise TypeError(
            f"Unsupported image type {type(image).__name__} ({_short_repr(image)}): pass PIL images, numpy arrays or "
            "torch tensors."
        )
    if not isinstance(image, Image.Image):
        if image.ndim not in (2, 3):
            raise ValueError(
                f"An image must have 2 or 3 dimensions (a 4-D input is a batch), got shape {tuple(image.shape)}."
            )
        height, width = image.shape[-2:] if channels_first or image.ndim == 2 else image.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"Empty image of shape {tuple(image.shape)}.")
        _check_image_pixels(height, width, max_pixels)

    pixels = None
    for top, band, divisor in bands:
        # The band as (C, h, W): a view, no copy.
        if band.ndim == 2:
            band = band[None]
        elif not channels_first:
            band = band.transpose(2, 0, 1) if isinstance(band, np.ndarray) else band.permute(2, 0, 1)
        if pixels is None:
            channels = band.shape[0]
            if channels not in (1, 2, 3, 4):
                raise ValueError(f"An image needs 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA) channels, got {channels}.")
            # Grayscale (+ alpha) keeps its gray channel (replicated below), RGBA drops alpha.
            kept = {1: 1, 2: 1, 3: 3, 4: 3}[channels] if convert_rgb else channels
            padded_h, padded_w = _padded_size([(height, width)], size_divisibility)
            out_channels = 3 if convert_rgb else channels
            device = band.device if isinstance(band, torch.Tensor) else "cpu"
            make = torch.zeros if (padded_h, padded_w) != (height, width) else torch.empty
            pixels = make(out_channels, padded_h, padded_w, dtype=torch.float32, device=device)
        rows = slice(top, top + band.shape[1])
        if isinstance(band, np.ndarray):
            # The cast is exact for integers and rounds floats to nearest, as torch's. Values beyond float32 become
            # infinite, and are reported as such below.
            with np.errstate(over="ignore", invalid="ignore"):
                np.copyto(pixels[:kept, rows, :width].numpy(), band[:kept], casting="unsafe")
        else:
            pixels[:kept, rows, :width].copy_(band[:kept])
        if divisor is not None:
            pixels[:kept, rows, :width].div_(divisor)
        elif multiplier is not None:
            pixels[:kept, rows, :width].mul_(multiplier)

    image_region = pixels[:kept, :height, :width]
    if is_float:
        # NaN propagates through min/max, and infinities are their own extremes: one pass, no temporary.
        low, high = (float(v) for v in torch.aminmax(image_region))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(_non_finite_message(image_region))
        if 0.0 < high <= 1.0 and image_region.numel() > 1:
            logger.warning_once(
                "A float image has all its values in [0, 1], but CATSegImageProcessor expects pixels on the 0-255 "
                "scale (as the official model). Multiply such images by 255 before processing them."
            )
    if kept < pixels.shape[0]:
        pixels[kept:, :height, :width] = image_region[:1]
    return pixels, (height, width)


def _non_finite_message(pixels: torch.Tensor) -> str:
    """Names how many pixels of a `(C, H, W)` image are NaN or infinite (counted row band by row band)."""
    height, width = pixels.shape[-2:]
    band_rows = max(1, _LOAD_BAND_PIXELS // width)
    count, nan_count, first = 0, 0, None
    for top in range(0, height, band_rows):
        band = pixels[:, top : top + band_rows]
        bad = (~torch.isfinite(band)).any(dim=0)
        band_count = int(bad.sum())
        if band_count:
            count += band_count
            nan_count += int(torch.isnan(band).any(dim=0).sum())
            if first is None:
                row, column = (int(v) for v in bad.nonzero()[0])
                first = (top + row, column)
    return (
        f"{count} of its {height * width} pixels are NaN or infinite ({nan_count} with a NaN; the first at row "
        f"{first[0]}, column {first[1]}). A segmentation computed from them would be meaningless: replace them (e.g. "
        "`np.nan_to_num`) or fix what produced the image. (Float values beyond float32's range count as infinite.)"
    )


def _padded_size(sizes: Sequence[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    """The largest height and width of `sizes`, each rounded up to a multiple of `size_divisibility` (> 1)."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    if size_divisibility > 1:
        height = math.ceil(height / size_divisibility) * size_divisibility
        width = math.ceil(width / size_divisibility) * size_divisibility
    return height, width


__all__ = ["DEFAULT_MAX_IMAGE_PIXELS"]
