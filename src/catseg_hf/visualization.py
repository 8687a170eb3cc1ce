"""Drawing segmentation results: class colours, the coloured overlay with its legend, label-map PNGs.

Shared by the `catseg-hf` command line and the web demo, and importable from notebooks:

```python
>>> from catseg_hf.visualization import draw_overlay
>>> draw_overlay(image, label_map, ["wall", "floor", "sofa"]).save("overlay.png")
```

Colours are a pure function of the class id ([`palette`]), so the same class gets the same colour in the overlay, its
legend, the demo's annotated image and every run. The overlay tints each class region with its colour and outlines
the regions in the exact, unblended colour that the legend swatch shows.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont


# How much of the class colour goes into the tint of a region (the rest is the image).
OVERLAY_ALPHA = 0.55
# Class names longer than this are shortened in the legend (the JSON outputs keep them whole).
LEGEND_MAX_NAME_CHARS = 40
# Hue of class 0, on [0, 1): a blue. The first class is often "background" or the most frequent one and covers much of
# the image; a blue tint keeps the image readable where a red one (hue 0) would read as an alarm.
FIRST_HUE = 0.58
# PIL modes whose 8-bit RGB version PIL's own `convert("RGB")` gives as the image processor reads them (alpha dropped,
# palette applied); 16-bit, 32-bit integer and float modes are scaled here as the processor scales them.
_PIL_8BIT_MODES = ("RGBA", "RGBX", "L", "LA", "P", "1")
_PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def palette(num_classes: int) -> np.ndarray:
    """A deterministic colour per class id, `(num_classes, 3)` uint8.

    Hues step by the golden angle from [`FIRST_HUE`], so that neighbouring ids (often related classes) get distant
    hues; saturation and brightness alternate to separate close hues further. Class 0 is a muted blue (not red), and
    the first thousand classes all get different colours.
    """
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    colours = np.empty((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        hue = (FIRST_HUE + index * golden) % 1.0
        if index == 0:
            saturation, value = 0.45, 0.85
        else:
            saturation = (0.85, 0.6, 0.95)[index % 3]
            value = (0.95, 0.8, 0.65)[(index // 3) % 3]
        red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
        colours[index] = (round(red * 255), round(green * 255), round(blue * 255))
    return colours


def colour_hex(colour: Sequence[int]) -> str:
    """`"#rrggbb"` of an RGB triple (what web front ends such as Gradio's colour maps take)."""
    red, green, blue = (int(channel) for channel in colour)
    return f"#{red:02x}{green:02x}{blue:02x}"


def display_image(image: Any) -> Image.Image:
    """An 8-bit RGB version of an image, following the CAT-Seg image processor's reading rules.

    16-bit data (PIL modes `I;16*` and `I`, uint16 arrays) is divided by 257 as the processor divides it, instead of
    being clipped to white as PIL's `convert("RGB")` would; float data is taken on the 0-255 scale; grayscale is
    replicated and alpha dropped (not composited).

    Args:
        image (`Any`):
            A PIL image, or an `(H, W)`, `(H, W, C)` or `(C, H, W)` numpy array / torch tensor (C = 1 to 4),
            as the image processor takes them (channels last preferred for arrays, first for tensors).
    """
    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return image
        if image.mode in _PIL_8BIT_MODES:
            return image.convert("RGB")
        if image.mode == "La":  # premultiplied alpha: undone first, as the processor does
            return image.convert("LA").convert("RGB")
        if image.mode == "PA":
            return image.convert("RGBA").convert("RGB")
        if image.mode in _PIL_16BIT_MODES or image.mode == "I":
            return _to_rgb(np.asarray(image).astype(np.float64) / 257.0)
        if image.mode == "F":
            return _to_rgb(np.asarray(image))
        return image.convert("RGB")
    channels_first = hasattr(image, "detach")  # torch tensors are channels-first by default, as in the processor
    if channels_first:
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3:
        first, last = array.shape[0] in (1, 2, 3, 4), array.shape[-1] in (1, 2, 3, 4)
        if (first and not last) or (first and last and channels_first):
            array = array.transpose(1, 2, 0)
    elif array.ndim != 2:
        raise ValueError(f"An image must have 2 or 3 dimensions, got shape {array.shape}.")
    if array.dtype == np.uint16:
        array = array.astype(np.float64) / 257.0
    elif array.dtype == np.bool_:
        array = array.astype(np.float64) * 255.0
    return _to_rgb(array)


def _to_rgb(array: np.ndarray) -> Image.Image:
    """An `(H, W)` or `(H, W, C)` array on the 0-255 scale as an 8-bit RGB image (gray replicated, alpha dropped)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"An image needs 1 to 4 channels, got shape {array.shape}.")
    array = array[..., :1].repeat(3, axis=-1) if array.shape[-1] in (1, 2) else array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(np.rint(np.nan_to_num(array.astype(np.float64))), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def label_map_image(label_map: Any, num_classes: int) -> Image.Image:
    """The label map as a PNG-ready image: 8-bit ("L") for up to 255 classes, 16-bit ("I;16") above.

    255 is left out of the 8-bit range on purpose: it is the usual "ignore" id of segmentation datasets.

    Raises:
        ValueError: for more than 65536 classes, which do not fit 16 bits.
    """
    if num_classes > 65536:
        raise ValueError(f"{num_classes} classes do not fit a 16-bit label map; use at most 65536 classes.")
    dtype = np.uint16 if num_classes > 255 else np.uint8
    return Image.fromarray(np.ascontiguousarray(_as_label_array(label_map).astype(dtype)))


def class_fractions(label_map: Any, labels: Sequence[str]) -> dict[str, float]:
    """Fraction of the pixels of each class present, `{name: fraction}` in class-id order."""
    label_map = _as_label_array(label_map)
    counts = _class_counts(label_map, len(labels))
    total = int(label_map.size)
    return {labels[index]: int(count) / total for index, count in enumerate(counts) if count}


def region_outlines(label_map: Any, width: int = 1) -> np.ndarray:
    """A boolean `(H, W)` mask of the pixels within `width` pixels of a pixel of another class.

    Both sides of a boundary are marked, each in its own class colour when painted, so that every region keeps a
    solid outline of its colour.
    """
    label_map = _as_label_array(label_map)
    edges = np.zeros(label_map.shape, dtype=bool)
    for shift in range(1, width + 1):
        vertical = label_map[shift:, :] != label_map[:-shift, :]
        horizontal = label_map[:, shift:] != label_map[:, :-shift]
        edges[shift:, :] |= vertical
        edges[:-shift, :] |= vertical
        edges[:, shift:] |= horizontal
        edges[:, :-shift] |= horizontal
    return edges


def overlay_image(
    image: Any, label_map: Any, num_classes: int, alpha: float = OVERLAY_ALPHA, outline_width: int | None = None
) -> Image.Image:
    """The image with each class region tinted by its colour and outlined in its exact colour (no legend).

    Args:
        image (`Any`):
            The segmented image (see [`display_image`] for what is accepted).
        label_map (`Any`):
            `(H, W)` class ids at the image size.
        num_classes (`int`):
            The number of classes (the palette size).
        alpha (`float`, *optional*, defaults to `OVERLAY_ALPHA`):
            Share of the class colour in the tint, in [0, 1]; 1 paints the regions in their plain colours.
        outline_width (`int`, *optional*):
            Outline width in pixels; default: 1 per 256 pixels of the shorter side, at least 1. 0: none.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    label_map = _as_label_array(label_map)
    base = display_image(image)
    if (base.height, base.width) != label_map.shape:
        raise ValueError(
            f"The label map is {label_map.shape[1]}x{label_map.shape[0]} but the image is {base.width}x{base.height}; "
            "post-process the logits to the image size (target_sizes=[(height, width)])."
        )
    colours = palette(num_classes)[label_map]
    pixels = np.asarray(base, dtype=np.float32)
    tinted = np.clip(np.rint(pixels * (1.0 - alpha) + colours.astype(np.float32) * alpha), 0, 255).astype(np.uint8)
    if outline_width is None:
        outline_width = max(1, min(label_map.shape) // 256)
    if outline_width > 0:
        edges = region_outlines(label_map, outline_width)
        tinted[edges] = colours[edges]
    return Image.fromarray(tinted, mode="RGB")


def legend_entries(label_map: Any, labels: Sequence[str]) -> list[tuple[int, str, float]]:
    """`(class id, name, pixel fraction)` of each class present, in class-id order."""
    label_map = _as_label_array(label_map)
    counts = _class_counts(label_map, len(labels))
    total = int(label_map.size)
    return [(index, labels[index], int(count) / total) for index, count in enumerate(counts) if count]


def draw_legend(
    entries: Sequence[tuple[int, str, float]], colours: np.ndarray, width: int, font_size: int | None = None
) -> Image.Image:
    """A white strip `width` pixels wide listing the entries: colour swatch, name and percentage of the pixels.

    As many columns as fit, filled top to bottom (column-major, so that the legend reads down like a list). Each
    swatch is filled with exactly the class colour (the thin dark frame around it lies outside the fill).
    """
    font = _legend_font(font_size if font_size is not None else _font_size_for(width))
    texts = [f"{_shorten(name)} ({100.0 * fraction:.1f}%)" for _, name, fraction in entries]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_height = max(1, measure.textbbox((0, 0), "Ag", font=font)[3])
    swatch = text_height
    row_height = text_height + max(4, text_height // 2)
    margin, gap, pad = max(6, text_height // 2), max(12, text_height), max(4, text_height // 3)
    widths = [swatch + 2 + pad + int(math.ceil(measure.textlength(text, font=font))) for text in texts] or [0]
    column_width = max(widths) + gap
    width = max(width, column_width + 2 * margin)
    columns = max(1, min(len(texts), (width - 2 * margin) // column_width))
    rows = math.ceil(len(texts) / columns)

    legend = Image.new("RGB", (width, rows * row_height + 2 * margin), "white")
    draw = ImageDraw.Draw(legend)
    for position, ((class_id, _, _), text) in enumerate(zip(entries, texts)):
        column, row = divmod(position, rows)
        left = margin + column * column_width
        top = margin + row * row_height
        # Frame first, then the fill inside it: the fill's pixels are all exactly the class colour.
        draw.rectangle((left, top, left + swatch + 1, top + swatch + 1), outline=(60, 60, 60))
        draw.rectangle((left + 1, top + 1, left + swatch, top + swatch), fill=tuple(int(c) for c in colours[class_id]))
        draw.text((left + swatch + 2 + pad, top), text, fill=(0, 0, 0), font=font)
    return legend


def draw_overlay(
    image: Any,
    label_map: Any,
    labels: Sequence[str],
    alpha: float = OVERLAY_ALPHA,
    outline_width: int | None = None,
) -> Image.Image:
    """The image with its classes painted over it ([`overlay_image`]), above a legend of the classes present.

    The legend lists the classes present in class-id order (colour swatch, name, percentage of the pixels); its
    swatches are the exact colours of the region outlines, and with `alpha=1` of the whole regions.

    Args:
        image (`Any`):
            The segmented image: PIL (any mode the image processor reads, 16-bit included) or array.
        label_map (`Any`):
            `(H, W)` class ids (numpy or torch) at the image size, e.g. `post_process_semantic_segmentation`'s
            output for `target_sizes=[(H, W)]`.
        labels (`Sequence[str]`):
            The class names, indexed by class id.
        alpha (`float`, *optional*, defaults to `OVERLAY_ALPHA`):
            See [`overlay_image`].
        outline_width (`int`, *optional*):
            See [`overlay_image`].

    Returns:
        An RGB PIL image: the overlay on top, the legend below it.
    """
    label_map = _as_label_array(label_map)
    overlay = overlay_image(image, label_map, len(labels), alpha=alpha, outline_width=outline_width)
    legend = draw_legend(legend_entries(label_map, labels), palette(len(labels)), overlay.width)
    canvas = Image.new("RGB", (max(overlay.width, legend.width), overlay.height + legend.height), "white")
    canvas.paste(overlay, (0, 0))
    canvas.paste(legend, (0, overlay.height))
    return canvas


def _as_label_array(label_map: Any) -> np.ndarray:
    if hasattr(label_map, "detach"):  # a torch tensor, without importing torch here
        label_map = label_map.detach().cpu().numpy()
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or label_map.dtype.kind not in "iu":
        raise ValueError(
            f"A label map must be a 2-D array of integer class ids, got shape {label_map.shape} and dtype "
            f"{label_map.dtype}."
        )
    if label_map.size and label_map.min() < 0:
        raise ValueError(f"A label map holds class ids >= 0, got {int(label_map.min())}.")
    return label_map


def _class_counts(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(label_map.reshape(-1), minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"The label map holds class id {len(counts) - 1}, but there are only {num_classes} labels.")
    return counts


def _font_size_for(width: int) -> int:
    # Readable on small images (the tiny demo's 128 px) and on photos shown scaled down (a 4000 px one).
    return int(min(36, max(11, width // 48)))


def _legend_font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, AttributeError, OSError):
        return ImageFont.load_default()


def _shorten(name: str) -> str:
    return name if len(name) <= LEGEND_MAX_NAME_CHARS else name[: LEGEND_MAX_NAME_CHARS - 3] + "..."


__all__ = [
    "OVERLAY_ALPHA",
    "class_fractions",
    "colour_hex",
    "display_image",
    "draw_legend",
    "draw_overlay",
    "label_map_image",
    "legend_entries",
    "overlay_image",
    "palette",
    "region_outlines",
]
