"""Training and evaluation transforms following the official CAT-Seg recipe.

The official CAT-Seg training data path (detectron2's MaskFormer semantic dataset mapper with
the CAT-Seg COCO-Stuff config) applies, in this order:

1. `ResizeShortestEdge(384, max_size=1333)` -- the shorter side becomes 384 (1333 is
   detectron2's default `INPUT.MAX_SIZE_TRAIN`, which the CAT-Seg configs do not override);
   the image is resized bilinearly with PIL, the label with nearest neighbour;
2. `RandomCrop_CategoryAreaConstraint("absolute", (384, 384), SINGLE_CATEGORY_MAX_AREA)` --
   the crop is clipped to the image size; with `cat_max_ratio < 1` it retries up to 10
   times until no single category covers `cat_max_ratio` or more of the crop (the ignore
   label does not count, and a crop with a single category never qualifies); the official
   value is 1.0, i.e. disabled;
3. `ColorAugSSDTransform` -- SSD photometric distortion on the uint8 image;
4. `RandomFlip` -- horizontal, p = 0.5;
5. padding of the image (value 128, *before* normalisation) and of the label (ignore value)
   to the crop size when the resized image is smaller than the crop.

[`train_transform`] re-implements that pipeline with numpy/PIL/torch and an explicit
`numpy.random.Generator` (so it is deterministic given a seed). Outputs are an RGB uint8
`(H, W, 3)` image and an int64 `(H, W)` label.

For evaluation the processor handles model-side resizing; [`resize_shortest_edge`]
provides detectron2's test-time `ResizeShortestEdge(640, max_size=2560)` for the evaluation
script.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "shortest_edge_size",
    "resize_shortest_edge",
    "resize_label_nearest",
    "sample_crop",
    "color_aug_ssd",
    "rgb_to_hsv_uint8",
    "hsv_to_rgb_uint8",
    "train_transform",
    "transform_training_batch",
    "TrainTransform",
    "EvalTransform",
    "to_uint8_rgb",
    "to_label_array",
]

# Official values (CAT-Seg configs + detectron2 defaults).
DEFAULT_CROP_SIZE = 384
DEFAULT_MIN_SIZE_TRAIN = 384
DEFAULT_MAX_SIZE_TRAIN = 1333
DEFAULT_MIN_SIZE_TEST = 640
DEFAULT_MAX_SIZE_TEST = 2560
# The MaskFormer semantic mapper pads the raw (0-255) image with 128 and the label with the
# ignore value when an augmented image is smaller than the crop.
OFFICIAL_IMAGE_PAD_VALUE = 128
CROP_RETRIES = 10


# --------------------------------------------------------------------------- conversions


def to_uint8_rgb(image: Any) -> np.ndarray:
    """Convert a PIL image / numpy array to a contiguous uint8 `(H, W, 3)` RGB array.

    Grayscale inputs are repeated to three channels and an alpha channel is dropped, which is
    what detectron2's `read_image(format="RGB")` does for such files.
    """
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8).copy()
    if isinstance(image, torch.Tensor):
        raise TypeError(
            "Expected a PIL image or a uint8 (H, W, 3) numpy array, got a torch.Tensor. Convert it with "
            "`tensor.permute(1, 2, 0).numpy()` (and make sure it is uint8 0-255) first."
        )
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(
            f"Image arrays must be uint8 with values 0-255, got dtype {array.dtype}. "
            "Convert with `array.astype(np.uint8)` after scaling to 0-255."
        )
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    elif not (array.ndim == 3 and array.shape[2] == 3):
        raise ValueError(f"Expected an image of shape (H, W, 3) (channels last), got shape {array.shape}.")
    return np.ascontiguousarray(array)


def to_label_array(label: Any) -> np.ndarray:
    """Convert a PIL / numpy label map to a 2-D integer numpy array, keeping its values.

    16-bit PIL images (modes `"I;16"`, `"I"`) keep their full range -- they are never sent
    through mode `"L"`, which would clip ADE-847 / PASCAL-Context-459 ids.
    """
    if isinstance(label, Image.Image):
        if label.mode in ("RGB", "RGBA"):
            raise ValueError(
                f"Label images must be single-channel class-id maps, got a mode {label.mode!r} image. "
                "Colour-coded masks must be converted to class ids first (e.g. with a palette lookup)."
            )
        if label.mode == "P":
            # Palette PNGs (e.g. PASCAL VOC) store class ids as palette indices: read the indices.
            return np.asarray(label, dtype=np.uint8).copy()
        array = np.asarray(label)
    else:
        array = np.asarray(label)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(f"Expected a 2-D label map (H, W), got shape {array.shape}.")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError("Float label maps must contain whole numbers only (class ids).")
        array = array.astype(np.int64)
    elif array.dtype.kind not in "iub":
        raise TypeError(f"Unsupported label dtype {array.dtype}; expected an integer class-id map.")
    return np.ascontiguousarray(array)


# --------------------------------------------------------------------------- resizing


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """New `(height, width)` for detectron2's `ResizeShortestEdge`.

    The shorter side becomes `short`; if the longer side would then exceed `max_size` the
    scale is reduced so that it equals `max_size`. Sizes are rounded half up, as detectron2 does.
    """
    scale = short / min(height, width)
    if height < width:
        new_h, new_w = float(short), scale * width
    else:
        new_h, new_w = scale * height, float(short)
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return int(new_h + 0.5), int(new_w + 0.5)


def _resize_image_array(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 HWC image with PIL (what detectron2 uses for uint8 images)."""
    new_h, new_w = size
    if image.shape[:2] == (new_h, new_w):
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def resize_label_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to `(height, width)`, keeping the dtype.

    Uses `torch.nn.functional.interpolate(mode="nearest")` on float64, exactly like detectron2
    does for (double) segmentation maps, so indices match the official pipeline and 16-bit ids
    are preserved.
    """
    new_h, new_w = size
    if label.shape == (new_h, new_w):
        return label
    tensor = torch.from_numpy(np.ascontiguousarray(label).astype(np.float64))[None, None]
    resized = F.interpolate(tensor, size=(new_h, new_w), mode="nearest")[0, 0]
    return resized.numpy().astype(label.dtype)


def resize_shortest_edge(
    image: Any,
    short: int = DEFAULT_MIN_SIZE_TEST,
    max_size: int = DEFAULT_MAX_SIZE_TEST,
    interpolation: str = "bilinear",
):
    """Resize so the shorter side is `short` (longer side capped at `max_size`).

    This is detectron2's test-time `ResizeShortestEdge(640, 2560)` used by the official
    CAT-Seg evaluation. Accepts a PIL image (returns PIL) or a numpy array (returns numpy).

    Args:
        image (`Any`):
            PIL image, uint8 `(H, W, 3)` array, or a 2-D label map.
        short (`int`, *optional*, defaults to `DEFAULT_MIN_SIZE_TEST`):
            Target length of the shorter side.
        max_size (`int`, *optional*, defaults to `DEFAULT_MAX_SIZE_TEST`):
            Cap on the longer side.
        interpolation (`str`, *optional*, defaults to `"bilinear"`):
            `"bilinear"` for images, `"nearest"` for label maps.
    """
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}.")
    if isinstance(image, Image.Image):
        width, height = image.size
        new_h, new_w = shortest_edge_size(height, width, short, max_size)
        if (new_h, new_w) == (height, width):
            return image
        if interpolation == "nearest":
            # Go through torch so that label values (incl. 16-bit) and indices match detectron2.
            array = resize_label_nearest(to_label_array(image), (new_h, new_w))
            if array.dtype.itemsize > 4:
                array = array.astype(np.int32)  # PIL has no 64-bit integer mode
            return Image.fromarray(array)
        return image.resize((new_w, new_h), Image.BILINEAR)
    array = np.asarray(image)
    height, width = array.shape[:2]
    new_size = shortest_edge_size(height, width, short, max_size)
    if interpolation == "nearest":
        return resize_label_nearest(array, new_size)
    if array.dtype != np.uint8:
        raise TypeError(f"Bilinear resizing expects a uint8 image, got dtype {array.dtype}.")
    return _resize_image_array(array, new_size)


# --------------------------------------------------------------------------- cropping


def _crop_hw(crop_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(crop_size, (int, np.integer)):
        return int(crop_size), int(crop_size)
    crop_h, crop_w = (int(v) for v in crop_size)
    return crop_h, crop_w


def sample_crop(
    label: np.ndarray,
    crop_size: int | Sequence[int],
    rng: np.random.Generator,
    cat_max_ratio: float = 1.0,
    ignore_index: int | None = 255,
) -> tuple[int, int, int, int]:
    """Choose a random crop window `(y0, x0, height, width)` (detectron2 semantics).

    The window is `crop_size` clipped to the label size. With `cat_max_ratio < 1` up to 10
    windows are tried until one has more than one category (`ignore_index` not counted) and
    its largest category covers less than `cat_max_ratio` of the counted pixels; if none
    qualifies, the last window is used.
    """
    height, width = label.shape[:2]
    crop_h, crop_w = _crop_hw(crop_size)
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    tries = 1 if cat_max_ratio >= 1.0 else CROP_RETRIES
    y0 = x0 = 0
    for _ in range(tries):
        y0 = int(rng.integers(height - crop_h + 1))
        x0 = int(rng.integers(width - crop_w + 1))
        if tries == 1:
            break
        window = label[y0 : y0 + crop_h, x0 : x0 + crop_w]
        values, counts = np.unique(window, return_counts=True)
        if ignore_index is not None:
            counts = counts[values != ignore_index]
        if len(counts) > 1 and counts.max() < counts.sum() * cat_max_ratio:
            break
    return y0, x0, crop_h, crop_w


# --------------------------------------------------------------------------- colour


# OpenCV's fixed-point reciprocal tables for 8-bit RGB->HSV (hsv_shift = 12). Using the same
# tables reproduces cv2.cvtColor(..., COLOR_BGR2HSV) on uint8 images without depending on cv2.
_HSV_SHIFT = 12
_SDIV = np.zeros(256, dtype=np.int64)
_HDIV180 = np.zeros(256, dtype=np.int64)
_SDIV[1:] = np.rint((255 << _HSV_SHIFT) / np.arange(1, 256, dtype=np.float64)).astype(np.int64)
_HDIV180[1:] = np.rint((180 << _HSV_SHIFT) / (6.0 * np.arange(1, 256, dtype=np.float64))).astype(np.int64)
# Which of (v, p, q, t) becomes (b, g, r) in each of the six hue sectors (OpenCV's table).
_SECTOR_BGR = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def rgb_to_hsv_uint8(image: np.ndarray) -> np.ndarray:
    """RGB uint8 -> HSV uint8 with OpenCV's 8-bit conventions (H in [0, 180), S and V in [0, 255]).

    Equivalent to `cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)` on the same pixels (HSV does not
    depend on the channel order of the input once it is interpreted correctly).
    """
    rgb = image.astype(np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    vmin = np.minimum(np.minimum(r, g), b)
    diff = v - vmin
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    # Same priority as OpenCV: red max first, then green, then blue.
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV180[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_rgb_uint8(hsv: np.ndarray) -> np.ndarray:
    """HSV uint8 (OpenCV 8-bit conventions) -> RGB uint8, following OpenCV's float path."""
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
    h = np.where(h >= 6.0, h - 6.0, h)
    sector = np.floor(h).astype(np.int64)
    frac = h - sector
    one = np.float32(1.0)
    tab = np.stack([v, v * (one - s), v * (one - s * frac), v * (one - s * (one - frac))], axis=-1)
    idx = _SECTOR_BGR[np.clip(sector, 0, 5)]  # (..., 3) indices for (b, g, r)
    bgr = np.take_along_axis(tab, idx, axis=-1)
    bgr = np.where((s == 0)[..., None], v[..., None], bgr)
    rgb = bgr[..., ::-1]
    return np.clip(np.rint(rgb * np.float32(255.0)), 0, 255).astype(np.uint8)


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # Same arithmetic as the SSD transform: float32 affine map, clip, then truncate to uint8.
    out = values.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


def color_aug_ssd(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """SSD-style photometric distortion of a uint8 RGB image (detectron2 `ColorAugSSDTransform`).

    Each step is applied with probability 0.5:

    * brightness: add `U(-brightness_delta, brightness_delta)`;
    * then, in one of two random orders, either *contrast, saturation, hue* or
      *saturation, hue, contrast*:

      - contrast: multiply by `U(*contrast_range)`;
      - saturation: multiply the HSV saturation by `U(*saturation_range)`;
      - hue: add a random integer in `[-hue_delta, hue_delta]` to the OpenCV hue (0-179, so
        18 is 36 degrees), modulo 180.

    Every step clips to 0-255 and truncates to uint8 like the original. The original works on
    BGR and converts with OpenCV; brightness/contrast act on all channels alike and HSV is
    computed from the correctly interpreted colour, so working on RGB gives the same result.
    """
    img = to_uint8_rgb(image)
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))

    def contrast(x):
        if rng.integers(2):
            return _convert(x, alpha=rng.uniform(*contrast_range))
        return x

    def saturation(x):
        if rng.integers(2):
            hsv = rgb_to_hsv_uint8(x)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
            return hsv_to_rgb_uint8(hsv)
        return x

    def hue(x):
        if rng.integers(2):
            hsv = rgb_to_hsv_uint8(x)
            shift = int(rng.integers(-hue_delta, hue_delta + 1))
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 180
            return hsv_to_rgb_uint8(hsv)
        return x

    if rng.integers(2):
        img = hue(saturation(contrast(img)))
    else:
        img = contrast(hue(saturation(img)))
    return img


# --------------------------------------------------------------------------- full pipelines


def train_transform(
    image: Any,
    label: Any,
    rng: np.random.Generator,
    *,
    crop_size: int | Sequence[int] = DEFAULT_CROP_SIZE,
    min_size: int | Sequence[int] = DEFAULT_MIN_SIZE_TRAIN,
    max_size: int = DEFAULT_MAX_SIZE_TRAIN,
    cat_max_ratio: float = 1.0,
    ignore_index: int = 255,
    flip_prob: float = 0.5,
    color_aug: bool = True,
    image_pad_value: int = OFFICIAL_IMAGE_PAD_VALUE,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the official CAT-Seg training augmentation to one `(image, label)` pair.

    Args:
        image (`Any`):
            PIL image or uint8 `(H, W, 3)` RGB array.
        label (`Any`):
            PIL image or 2-D array of class ids (any integer width; 16-bit values are kept).
        rng (`np.random.Generator`):
            Source of randomness (`numpy.random.default_rng(seed)`).
        crop_size (`int | Sequence[int]`, *optional*, defaults to `DEFAULT_CROP_SIZE`):
            Random crop size, int or `(height, width)` (official: 384).
        min_size (`int | Sequence[int]`, *optional*, defaults to `DEFAULT_MIN_SIZE_TRAIN`):
            Target shorter side; a sequence means "pick one uniformly" (detectron2
            `"choice"` sampling). Official: 384.
        max_size (`int`, *optional*, defaults to `DEFAULT_MAX_SIZE_TRAIN`):
            Cap on the longer side after resizing (official/detectron2 default: 1333).
        cat_max_ratio (`float`, *optional*, defaults to `1.0`):
            Category-area constraint of the crop; 1.0 (official) disables it.
        ignore_index (`int`, *optional*, defaults to `255`):
            Label value ignored by the constraint and used to pad labels.
        flip_prob (`float`, *optional*, defaults to `0.5`):
            Probability of a horizontal flip (official: 0.5).
        color_aug (`bool`, *optional*, defaults to `True`):
            Apply [`color_aug_ssd`] (official: on).
        image_pad_value (`int`, *optional*, defaults to `OFFICIAL_IMAGE_PAD_VALUE`):
            Value used to pad the 0-255 image when it is smaller than the crop
            (official MaskFormer mapper: 128).

    Returns:
        `(image, label)`: uint8 `(h, w, 3)` RGB and int64 `(h, w)`, where `(h, w)` is the
        crop size.
    """
    img = to_uint8_rgb(image)
    lab = to_label_array(label)
    if img.shape[:2] != lab.shape:
        raise ValueError(
            f"Image and label sizes differ: image {img.shape[:2]} vs label {lab.shape} (height, width). "
            "Each mask must have exactly the pixel size of its image."
        )

    # 1. Resize the shorter side.
    if isinstance(min_size, (int, np.integer)):
        short = int(min_size)
    else:
        choices = [int(v) for v in min_size]
        short = choices[int(rng.integers(len(choices)))]
    new_size = shortest_edge_size(img.shape[0], img.shape[1], short, max_size)
    img = _resize_image_array(img, new_size)
    lab = resize_label_nearest(lab, new_size)

    # 2. Random crop (optionally with the category-area constraint).
    y0, x0, ch, cw = sample_crop(lab, crop_size, rng, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index)
    img = img[y0 : y0 + ch, x0 : x0 + cw]
    lab = lab[y0 : y0 + ch, x0 : x0 + cw]

    # 3. Photometric distortion (image only).
    if color_aug:
        img = color_aug_ssd(img, rng)

    # 4. Horizontal flip, applied to image and label together.
    if rng.uniform() < flip_prob:
        img = img[:, ::-1]
        lab = lab[:, ::-1]

    # 5. Pad bottom/right to the crop size when the resized image was smaller than the crop.
    crop_h, crop_w = _crop_hw(crop_size)
    out_img = np.full((crop_h, crop_w, 3), image_pad_value, dtype=np.uint8)
    out_lab = np.full((crop_h, crop_w), ignore_index, dtype=np.int64)
    out_img[:ch, :cw] = img
    out_lab[:ch, :cw] = lab
    return out_img, out_lab


def _worker_rng(seed: int | None) -> np.random.Generator:
    """A generator for the current process / DataLoader worker.

    Each DataLoader worker gets a fresh copy of the transform (every epoch, unless workers are
    persistent). Mixing in torch's per-worker seed -- `base_seed + worker_id`, where
    `base_seed` is drawn from torch's main-process generator for every epoch -- keeps workers
    from repeating each other *and* epochs from repeating the previous one, while staying
    reproducible under `torch.manual_seed` / `transformers.set_seed`.
    """
    info = torch.utils.data.get_worker_info()
    if info is not None:
        if seed is None:
            return np.random.default_rng(info.seed)
        return np.random.default_rng([int(seed), int(info.seed)])
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng(int(seed))


def transform_training_batch(
    batch: Mapping[str, Sequence[Any]],
    generators: Iterable[np.random.Generator],
    transform_kwargs: Mapping[str, Any],
    transform_name: str,
) -> dict[str, list[np.ndarray]]:
    """[`train_transform`] applied to every example of a `datasets` batch, the i-th with the i-th generator.
    `transform_name` names the calling transform in the error for missing columns."""
    if "image" not in batch or "label" not in batch:
        raise KeyError(
            f"{transform_name} needs 'image' and 'label' columns, got {sorted(batch)}. Load the data with "
            "catseg_hf.data.load_segmentation_dataset (which standardises the names) or rename the columns."
        )
    images, labels = [], []
    for image, label, rng in zip(batch["image"], batch["label"], generators):
        image, label = train_transform(image, label, rng, **transform_kwargs)
        images.append(image)
        labels.append(label)
    return {"image": images, "label": labels}


class TrainTransform:
    """Batch transform for `datasets.Dataset.set_transform` implementing [`train_transform`].

    Called with a batch dict `{"image": [...], "label": [...], ...}` (PIL images or arrays), it
    returns `{"image": [uint8 (h, w, 3) arrays], "label": [int64 (h, w) arrays]}`; other columns
    are dropped because the training collator does not use them.

    With `seed` set, the stream of augmentations is deterministic for a given sequence of
    calls in the main process (`num_workers=0`). Inside a `torch` DataLoader worker the
    generator is seeded with `(seed, torch worker seed)`: workers and epochs differ from each
    other, and runs are reproducible when torch is seeded too (`transformers.set_seed`).

    All keyword arguments are forwarded to [`train_transform`] (see there for the official
    values).
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = DEFAULT_CROP_SIZE,
        min_size: int | Sequence[int] = DEFAULT_MIN_SIZE_TRAIN,
        max_size: int = DEFAULT_MAX_SIZE_TRAIN,
        cat_max_ratio: float = 1.0,
        ignore_index: int = 255,
        flip_prob: float = 0.5,
        color_aug: bool = True,
        image_pad_value: int = OFFICIAL_IMAGE_PAD_VALUE,
        seed: int | None = None,
    ):
        if not 0.0 < cat_max_ratio <= 1.0:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}; 1.0 disables the constraint.")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be a probability in [0, 1], got {flip_prob}.")
        self.kwargs = dict(
            crop_size=crop_size,
            min_size=min_size,
            max_size=max_size,
            cat_max_ratio=cat_max_ratio,
            ignore_index=ignore_index,
            flip_prob=flip_prob,
            color_aug=color_aug,
            image_pad_value=image_pad_value,
        )
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple[int, int | None] | None = None

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if info is None else info.id)
        if self._rng is None or self._rng_owner != owner:
            self._rng = _worker_rng(self.seed)
            self._rng_owner = owner
        return self._rng

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[np.ndarray]]:
        return transform_training_batch(batch, itertools.repeat(self._generator()), self.kwargs, type(self).__name__)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{type(self).__name__}({args}, seed={self.seed!r})"


class EvalTransform:
    """Batch transform for evaluation: arrays out, labels untouched.

    Images become uint8 `(H, W, 3)` RGB arrays, optionally resized with detectron2's test-time
    [`resize_shortest_edge`] (`short=640, max_size=2560` in the official evaluation; the
    default `short=None` leaves resizing to the processor). Labels become int64 arrays at
    their original resolution (metrics are computed there).
    """

    def __init__(self, short: int | None = None, max_size: int = DEFAULT_MAX_SIZE_TEST):
        self.short = short
        self.max_size = max_size

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {"image": []}
        for image in batch["image"]:
            img = to_uint8_rgb(image)
            if self.short is not None:
                img = resize_shortest_edge(img, self.short, self.max_size)
            out["image"].append(img)
        if "label" in batch:
            out["label"] = [to_label_array(label).astype(np.int64) for label in batch["label"]]
        return out
