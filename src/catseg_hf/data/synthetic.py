"""A small, learnable synthetic open-vocabulary segmentation benchmark.

Every image shows one to three flat-coloured shapes ("red circle", "blue square", ...) on a
subtly textured grey background. Shapes are 20-50% of the shorter image side and overlap by at
most 10% of the smaller bounding box; the texture is low-contrast and nearly colourless, so
colour and outline are the cues. It exists so that the whole training pipeline (data ->
transforms -> collator -> model -> loss -> metric) can be proven end to end offline, on a CPU,
in minutes: a tiny CAT-Seg with a tiny CLIP trained from scratch should segment the *seen*
colour/shape combinations almost perfectly.

Classes
-------
``class_names`` is the same list for every split::

    0: "background"                     (the textured background)
    1..16: "<colour> <shape>"           (colour-major: red circle, red square, ..., yellow cross)

with colours ``red, green, blue, yellow`` and shapes ``circle, square, triangle, cross``.
The textured background is a real class (not ignored) so that mIoU is meaningful on every pixel.
Labels never contain the ignore value 255: shapes are rasterised with hard edges (no
anti-aliasing), so every pixel has exactly one correct class.

Splits
------
The 16 combinations are divided into 12 *seen* and 4 *held-out* ones. The held-out set is a
"diagonal" that keeps every colour and every shape present in training exactly three times,
so an unseen combination is a new *composition* of known words and appearances::

    held out: red triangle, green cross, blue circle, yellow square

* ``"train"``      -- only seen combinations;
* ``"validation"`` -- only seen combinations (different images than train for the same seed);
* ``"heldout"``    -- only held-out combinations.

The held-out classes keep their ids in ``class_names`` (so a model is always queried with all
17 names) but never appear in a training image. With ``vocabulary="seen"`` the train and
validation splits are labelled in the 13-name vocabulary of the seen classes instead
(:data:`SEEN_CLASS_NAMES`): the training vocabulary of a model that must never be taught a
held-out class, as CAT-Seg is trained on COCO-Stuff and tested on other vocabularies.

Captioned scenes
----------------
:func:`captioned_scenes` draws image-level pairs for CLIP-style pretraining: scenes of **all**
16 combinations with a caption naming what is shown ("A photo of a red circle and a blue
square in the scene") and the shown class names, but never a mask. Split ``"pretrain"`` has one
to three shapes per image; split ``"zeroshot"`` exactly one, for zero-shot classification.

Determinism
-----------
Image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, s, i])``, so a dataset
is fully determined by ``(split, seed, image_size, ...)`` and a smaller dataset is a prefix of a
larger one with the same arguments.
"""

from __future__ import annotations

import io
from functools import lru_cache
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "COLORS",
    "SHAPES",
    "CLASS_NAMES",
    "SEEN_COMBOS",
    "HELDOUT_COMBOS",
    "SPLITS",
    "combo_class_id",
    "synthetic_class_names",
    "SEEN_CLASS_NAMES",
    "CAPTION_TEMPLATE",
    "render_scene",
    "make_synthetic_dataset",
    "captioned_scenes",
    "caption_for",
]

# Saturated, well separated hues (roughly 0, 120, 225 and 55 degrees) so that colour is the
# dominant, easy cue; the background is a low-saturation grey, far from all of them.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 180, 55),
    "blue": (40, 75, 215),
    "yellow": (230, 210, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

BACKGROUND_NAME = "background"
CLASS_NAMES: list[str] = [BACKGROUND_NAME] + [f"{c} {s}" for c in COLORS for s in SHAPES]

# One held-out shape per colour and one held-out colour per shape (a Latin-square diagonal),
# so every colour and every shape is still seen three times in training.
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "cross"),
    ("blue", "circle"),
    ("yellow", "square"),
)
SEEN_COMBOS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLORS for s in SHAPES if (c, s) not in HELDOUT_COMBOS
)

ALL_COMBOS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
SEEN_CLASS_NAMES: list[str] = [BACKGROUND_NAME] + [f"{c} {s}" for c, s in SEEN_COMBOS]
VOCABULARIES: dict[str, list[str]] = {"all": CLASS_NAMES, "seen": SEEN_CLASS_NAMES}

# The split index enters the per-image seed so that train and validation never share images.
SPLITS: dict[str, int] = {"train": 0, "validation": 1, "heldout": 2}
# Caption splits draw from their own seed streams, so they never repeat a segmentation image.
CAPTION_SPLITS: dict[str, int] = {"pretrain": 3, "zeroshot": 4}
# The caption wording is the prompt template of the demo model, with every shown class named in it.
CAPTION_TEMPLATE = "A photo of a {} in the scene"
_SPLIT_COMBOS = {"train": SEEN_COMBOS, "validation": SEEN_COMBOS, "heldout": HELDOUT_COMBOS}

# Shape size (bounding-box side) as a fraction of the shorter image side. Large shapes keep the
# task learnable for a tiny model at low resolution (a 0.2 x 128 px cross still has 8 px arms).
_MIN_REL_SIZE = 0.20
_MAX_REL_SIZE = 0.50
# Two shapes may share at most this fraction of the smaller one's bounding box.
_MAX_OVERLAP = 0.10
_PLACEMENT_TRIES = 30


def synthetic_class_names(vocabulary: str = "all") -> list[str]:
    """Return a copy of a class-name list (index = class id).

    Args:
        vocabulary (`str`, *optional*, defaults to `"all"`):
            `"all"`: the 17 names shared by all splits; `"seen"`: background and the 12 seen combinations only.
    """
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"Unknown vocabulary {vocabulary!r}; expected one of {list(VOCABULARIES)}.")
    return list(VOCABULARIES[vocabulary])


def combo_class_id(color: str, shape: str) -> int:
    """Return the class id of the ``(color, shape)`` combination, e.g. ``("red", "circle") -> 1``."""
    name = f"{color} {shape}"
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ValueError(
            f"Unknown combination {name!r}: colour must be one of {list(COLORS)} and shape one of "
            f"{list(SHAPES)}."
        ) from None


def _normalize_combos(combos: Iterable[tuple[str, str] | str] | None) -> list[tuple[str, str]]:
    """Accept ``("red", "circle")`` tuples or ``"red circle"`` class names; validate them."""
    if combos is None:
        return list(SEEN_COMBOS)
    result = []
    for combo in combos:
        if isinstance(combo, str):
            parts = combo.split()
            if len(parts) != 2:
                raise ValueError(f"Cannot parse combination {combo!r}; write it as 'colour shape', e.g. 'red circle'.")
            combo = (parts[0], parts[1])
        color, shape = combo
        combo_class_id(color, shape)  # raises a helpful error for unknown names
        result.append((color, shape))
    if not result:
        raise ValueError("`combos` is empty: give at least one (colour, shape) combination to draw.")
    return result


@lru_cache(maxsize=32)
def _bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) matrix that linearly interpolates a coarse 1-D grid to ``out_size``.

    Used to upsample a small random grid into smooth, low-frequency background blotches with
    two small matrix products instead of a per-image image resize.
    """
    pos = (np.arange(out_size) + 0.5) / out_size * (in_size - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = pos - lo
    m = np.zeros((out_size, in_size), dtype=np.float32)
    m[np.arange(out_size), lo] += 1.0 - frac
    m[np.arange(out_size), hi] += frac
    return m


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A low-contrast, low-saturation texture: grey base + smooth blotches (grain is added later)."""
    base = rng.uniform(95.0, 165.0)
    tint = rng.uniform(-10.0, 10.0, size=3)  # keeps saturation low: max channel spread ~20
    grid = rng.uniform(-1.0, 1.0, size=(5, 5))
    blotches = _bilinear_matrix(height, 5) @ grid @ _bilinear_matrix(width, 5).T
    amplitude = rng.uniform(6.0, 14.0)
    img = np.empty((height, width, 3), dtype=np.float32)
    img[...] = base + tint
    img += (amplitude * blotches)[..., None]
    return img


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, size: float) -> np.ndarray:
    """Boolean mask of ``shape`` (bounding-box side ``size``) centred at ``(cy, cx)``.

    ``yy``/``xx`` hold pixel-centre coordinates of the region being tested.
    """
    dy = yy - cy
    dx = xx - cx
    half = size / 2.0
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # Upright isosceles triangle: apex at the top, base (full width) at the bottom.
        return (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) / 2.0)
    if shape == "cross":
        arm = size / 6.0  # arm thickness = size / 3, a fat "plus" that survives downscaling
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= half)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= half))
    raise ValueError(f"Unknown shape {shape!r}; expected one of {list(SHAPES)}.")


def _boxes_overlap_too_much(box: tuple[float, float, float, float], boxes: list) -> bool:
    y0, x0, y1, x1 = box
    for b0, a0, b1, a1 in boxes:
        inter = max(0.0, min(y1, b1) - max(y0, b0)) * max(0.0, min(x1, a1) - max(x0, a0))
        smaller = min((y1 - y0) * (x1 - x0), (b1 - b0) * (a1 - a0))
        if inter > _MAX_OVERLAP * smaller:
            return True
    return False


def _render(
    rng: np.random.Generator,
    height: int,
    width: int,
    combos: Sequence[tuple[str, str]],
    min_shapes: int,
    max_shapes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene; returns (uint8 HxWx3 RGB image, uint8 HxW class-id label)."""
    img = _background(rng, height, width)
    label = np.zeros((height, width), dtype=np.uint8)
    short = min(height, width)
    num_shapes = int(rng.integers(min_shapes, max_shapes + 1))
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(num_shapes):
        color, shape = combos[int(rng.integers(len(combos)))]
        size = float(rng.uniform(_MIN_REL_SIZE, _MAX_REL_SIZE)) * short
        for _try in range(_PLACEMENT_TRIES):
            cy = float(rng.uniform(size / 2.0, height - size / 2.0))
            cx = float(rng.uniform(size / 2.0, width - size / 2.0))
            box = (cy - size / 2.0, cx - size / 2.0, cy + size / 2.0, cx + size / 2.0)
            if not _boxes_overlap_too_much(box, placed):
                break
        else:
            continue  # no free spot; draw fewer shapes rather than pile them up
        placed.append(box)
        # Only evaluate the mask inside the bounding box: much faster than the full image.
        r0, c0 = max(int(box[0]) - 1, 0), max(int(box[1]) - 1, 0)
        r1, c1 = min(int(np.ceil(box[2])) + 1, height), min(int(np.ceil(box[3])) + 1, width)
        yy = (np.arange(r0, r1, dtype=np.float32) + 0.5)[:, None]
        xx = (np.arange(c0, c1, dtype=np.float32) + 0.5)[None, :]
        mask = _shape_mask(shape, yy, xx, cy, cx, size)
        # Per-instance colour jitter and a gentle shading gradient keep the task from being a
        # pure lookup table while leaving the hue unambiguous.
        rgb = np.asarray(COLORS[color], dtype=np.float32) + rng.uniform(-15.0, 15.0, size=3)
        gy, gx = rng.uniform(-8.0, 8.0, size=2)
        shade = gy * (yy - cy) / size + gx * (xx - cx) / size
        patch = rgb[None, None, :] + shade[..., None]
        img[r0:r1, c0:c1][mask] = patch[mask]  # shade broadcasts to the (rows, cols) of the box
        label[r0:r1, c0:c1][mask] = combo_class_id(color, shape)
    # Fine grain over everything (objects included) so that objects are not perfectly flat.
    img += 3.0 * rng.standard_normal(size=img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


def _parse_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        height = width = image_size
    else:
        height, width = (int(v) for v in image_size)
    if height < 16 or width < 16:
        raise ValueError(f"image_size must be at least 16 pixels per side (got {image_size!r}).")
    return height, width


def _check_shape_counts(min_shapes: int, max_shapes: int) -> None:
    if not 1 <= min_shapes <= max_shapes:
        raise ValueError(
            f"Need 1 <= min_shapes <= max_shapes, got min_shapes={min_shapes}, max_shapes={max_shapes}."
        )


def render_scene(
    seed: int,
    size: int | Sequence[int] = 128,
    combos: Iterable[tuple[str, str] | str] | None = None,
    *,
    min_shapes: int = 1,
    max_shapes: int = 3,
) -> tuple[Image.Image, Image.Image]:
    """Render a single synthetic scene (e.g. for a README demo).

    Args:
        seed: seed of the scene (same seed -> same scene).
        size: image side in pixels, or ``(height, width)``.
        combos: combinations to draw from, as ``("red", "circle")`` tuples or ``"red circle"``
            names. Defaults to the seen (training) combinations.
        min_shapes, max_shapes: number of shapes drawn (inclusive range).

    Returns:
        ``(image, label)``: a PIL RGB image and a PIL mode ``"L"`` label whose values index
        :data:`CLASS_NAMES`.
    """
    height, width = _parse_size(size)
    _check_shape_counts(min_shapes, max_shapes)
    img, label = _render(np.random.default_rng(seed), height, width, _normalize_combos(combos), min_shapes, max_shapes)
    return Image.fromarray(img, mode="RGB"), Image.fromarray(label, mode="L")


def _png_bytes(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    # compress_level=0 (stored, no zlib): ~4x faster than the default; the grain noise makes
    # these images nearly incompressible anyway (48 KB vs 31 KB per 128x128 image).
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def make_synthetic_dataset(
    split: str,
    num_images: int,
    seed: int,
    *,
    image_size: int | Sequence[int] = 128,
    min_shapes: int = 1,
    max_shapes: int = 3,
    vocabulary: str = "all",
):
    """Build the synthetic segmentation benchmark.

    Args:
        split: ``"train"`` or ``"validation"`` (seen combinations only) or ``"heldout"``
            (unseen combinations only). See the module docstring for the exact split.
        num_images: number of images.
        seed: non-negative integer; the dataset is a deterministic function of the arguments.
        image_size: image side in pixels (default 128), or ``(height, width)``.
        min_shapes, max_shapes: shapes per image (inclusive range, default 1..3).
        vocabulary: ``"all"`` (the 17 names, default) or ``"seen"`` (background and the 12 seen combinations; only
            for the ``"train"`` and ``"validation"`` splits, which show nothing else).

    Returns:
        ``(dataset, class_names)``: a :class:`datasets.Dataset` with columns ``image`` (PIL RGB,
        ``datasets.Image`` feature) and ``label`` (PIL mode ``"L"``, values are ids into
        ``class_names``; the ignore value 255 does not occur), and the class-name list, which is
        identical for all splits.
    """
    import datasets  # local import: rendering single scenes does not need `datasets`

    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {list(SPLITS)}.")
    if not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (numpy SeedSequence requirement), got {seed!r}.")
    height, width = _parse_size(image_size)
    _check_shape_counts(min_shapes, max_shapes)
    class_names = synthetic_class_names(vocabulary)
    if vocabulary == "seen" and split == "heldout":
        raise ValueError(
            "The 'heldout' split shows only held-out combinations, which the 'seen' vocabulary does not name; "
            "use vocabulary='all' to evaluate on it."
        )
    # Label ids are written in the chosen vocabulary; rendering itself always uses the 17-name ids.
    relabel = np.array([class_names.index(name) if name in class_names else 255 for name in CLASS_NAMES], np.uint8)

    combos = list(_SPLIT_COMBOS[split])
    images, labels = [], []
    for index in range(int(num_images)):
        rng = np.random.default_rng([int(seed), SPLITS[split], index])
        img, label = _render(rng, height, width, combos, min_shapes, max_shapes)
        label = relabel[label]
        # Pre-encode to PNG ourselves: that is what `datasets` would store anyway, and it lets us
        # pick a fast compression level.
        images.append({"bytes": _png_bytes(img, "RGB"), "path": None})
        labels.append({"bytes": _png_bytes(label, "L"), "path": None})

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    return dataset, class_names


def caption_for(class_names: Sequence[str], template: str = CAPTION_TEMPLATE) -> str:
    """The caption of a scene showing `class_names`: `template` with the names joined, e.g. "A photo of a red circle
    and a blue square in the scene"."""
    if not class_names:
        raise ValueError("A caption needs at least one class name.")
    return template.format(" and a ".join(class_names))


def captioned_scenes(
    split: str,
    seed: int,
    *,
    num_images: int | None = None,
    image_size: int | Sequence[int] = 128,
    template: str = CAPTION_TEMPLATE,
) -> Iterator[dict]:
    """Image-level pairs for CLIP-style pretraining: scenes of all 16 combinations with captions, never a mask.

    Args:
        split (`str`):
            `"pretrain"` (one to three shapes per image) or `"zeroshot"` (exactly one shape, for zero-shot
            classification).
        seed (`int`):
            Non-negative seed; image `i` is a deterministic function of `(split, seed, i)`.
        num_images (`int`, *optional*):
            How many pairs to yield; endless when not given.
        image_size (`int` or `(height, width)`, *optional*, defaults to 128):
            Image side in pixels.
        template (`str`, *optional*, defaults to `CAPTION_TEMPLATE`):
            The caption wording, with `{}` for the class names.

    Yields:
        `dict` with `image` (PIL RGB), `caption` (`str`) and `class_names` (the shown combinations, in caption
        order): image-level text only, no label map.
    """
    if split not in CAPTION_SPLITS:
        raise ValueError(f"Unknown caption split {split!r}; expected one of {list(CAPTION_SPLITS)}.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    height, width = _parse_size(image_size)
    max_shapes = 3 if split == "pretrain" else 1
    index = 0
    while num_images is None or index < num_images:
        rng = np.random.default_rng([int(seed), CAPTION_SPLITS[split], index])
        img, label = _render(rng, height, width, ALL_COMBOS, 1, max_shapes)
        shown = [CLASS_NAMES[i] for i in np.unique(label) if i > 0]
        rng.shuffle(shown)  # captions name objects in no fixed order
        del label  # pretraining is image-level: the mask the renderer drew goes no further
        yield {"image": Image.fromarray(img, mode="RGB"), "caption": caption_for(shown, template), "class_names": shown}
        index += 1
