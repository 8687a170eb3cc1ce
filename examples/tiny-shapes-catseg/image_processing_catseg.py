"""Image processor for CAT-Seg: the CLIP views of each image (preprocessing) and the settings they are made with.

Images are read by `image_inputs_catseg.py`; `post_process_semantic_segmentation` runs `post_processing_catseg.py`.

This file must only import torch, numpy, PIL, transformers and (relatively) our own processing files: it is copied
into saved model folders so that they load with `trust_remote_code=True` where `catseg_hf` is not installed.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import logging

from .image_inputs_catseg import (
    DEFAULT_MAX_IMAGE_PIXELS,
    _as_image_list,
    _channels_first,  # noqa: F401 (also imported from here before the split)
    _load_image,
    _padded_size,
    _short_repr,
)
from .post_processing_catseg import check_sliding_window, num_views, post_process_semantic_segmentation


logger = logging.get_logger(__name__)

# CLIP's normalisation on the 0-255 scale (the official CAT-Seg `clip_pixel_mean` / `clip_pixel_std`).
CLIP_IMAGE_MEAN = [122.7709383, 116.7460125, 104.09373615]
CLIP_IMAGE_STD = [68.5005327, 66.6321579, 70.3231630]
PROCESSING_MODES = ("sliding", "whole")

# transformers' `ImagesKwargs` that CAT-Seg's fixed recipe has no use for, with what to use instead. Giving one of them
# a value raises instead of silently doing nothing.
_UNSUPPORTED_IMAGES_KWARGS = {
    "do_resize": "every view is resized; set its side with `clip_resolution`",
    "size": "set the side of the views with `clip_resolution` and the sliding window with `sliding_canvas_size`, "
    "`sliding_tile_size` and `sliding_stride`",
    "default_to_square": "the views are always square (`clip_resolution`)",
    "crop_size": "CAT-Seg does not crop; whole mode resizes the whole (padded) image, sliding mode tiles it",
    "do_center_crop": "CAT-Seg does not crop; whole mode resizes the whole (padded) image, sliding mode tiles it",
    "resample": "all resizes are bilinear without antialiasing, as in the official implementation",
    "do_pad": "whole mode pads to a multiple of `size_divisibility` (0 or 1: no padding)",
    "pad_size": "whole mode pads to a multiple of `size_divisibility` (0 or 1: no padding)",
    "disable_grouping": "images are processed one at a time",
    "image_seq_length": "CAT-Seg has no image tokens",
}
# Keys that `save_pretrained` / `from_pretrained` add to a saved configuration.
_CONFIG_BOOKKEEPING_KEYS = ("image_processor_type", "auto_map", "processor_class", "feature_extractor_type")
_INT_SETTINGS = (
    "clip_resolution",
    "size_divisibility",
    "sliding_canvas_size",
    "sliding_tile_size",
    "sliding_stride",
    "max_image_pixels",
)
_RETURN_TENSORS = (None, "pt", "np")
_DATA_FORMATS = ("channels_first", "channels_last")


class CATSegImageProcessorKwargs(ImagesKwargs, total=False):
    """
    clip_resolution (`int`, *optional*, defaults to `self.clip_resolution`):
        Side of the square views fed to CLIP.
    size_divisibility (`int`, *optional*, defaults to `self.size_divisibility`):
        Whole mode pads each image (bottom/right, after normalisation) to a multiple of this; 0 or 1: no padding.
    mode (`str`, *optional*, defaults to `self.mode`):
        `"sliding"` or `"whole"`.
    sliding_canvas_size (`int`, *optional*, defaults to `self.sliding_canvas_size`):
        Side of the square canvas the image is resized to in sliding mode.
    sliding_tile_size (`int`, *optional*, defaults to `self.sliding_tile_size`):
        Side of the sliding-window tiles and of the global view.
    sliding_stride (`int`, *optional*, defaults to `self.sliding_stride`):
        Stride of the sliding window.
    max_image_pixels (`int`, *optional*, defaults to `self.max_image_pixels`):
        Largest image (height x width) processed; larger ones are refused. 0: no limit.
    """

    clip_resolution: int
    size_divisibility: int
    mode: str
    sliding_canvas_size: int
    sliding_tile_size: int
    sliding_stride: int
    max_image_pixels: int


class CATSegImageProcessor(BaseImageProcessor):
    r"""
    Turns images into the CLIP views CAT-Seg runs on, and CAT-Seg's logits back into segmentation maps.

    Two modes, both following the official implementation operation by operation (float32 torch math):

    - `"sliding"` (default; the protocol of the paper's numbers): the raw 0-255 image is bilinearly resized to a
      `sliding_canvas_size` square canvas, cut into `sliding_tile_size` tiles with stride `sliding_stride` (row-major,
      as `nn.Unfold`), and the raw image resized to `sliding_tile_size` is appended as the last (global) view; every
      view is CLIP-normalised and resized to `clip_resolution`. With the defaults: 4 tiles + 1 global view per image.
    - `"whole"`: the image is CLIP-normalised, zero-padded bottom/right to a multiple of `size_divisibility`, then
      bilinearly resized to `clip_resolution` x `clip_resolution` (aspect ratio not kept). One view per image.

    All resizes are bilinear with `align_corners=False` and no antialiasing. The pixel values are on the 0-255 scale,
    and so are the default mean and standard deviation (the official ones).

    Every setting below is also a keyword argument of [`~CATSegImageProcessor.preprocess`], which overrides it for
    one call. transformers' resize/crop/pad arguments (`size`, `crop_size`, `do_resize`, `resample`, `do_pad`, ...)
    are rejected with an error, as CAT-Seg's views are fixed by the settings below.

    Args:
        clip_resolution (`int`, *optional*, defaults to 384):
            Side of the square views fed to CLIP (384 for ViT-B/16, 336 for ViT-L/14@336).
        image_mean (`float` or `list[float]`, *optional*, defaults to CLIP's mean on the 0-255 scale):
            Per-channel mean subtracted from the pixels (one value per channel, or one for all).
        image_std (`float` or `list[float]`, *optional*, defaults to CLIP's std on the 0-255 scale):
            Per-channel standard deviation the pixels are divided by.
        size_divisibility (`int`, *optional*, defaults to 32):
            Whole mode pads each image to a multiple of this before resizing (0 or 1: no padding).
        mode (`str`, *optional*, defaults to `"sliding"`):
            `"sliding"` or `"whole"`.
        sliding_canvas_size (`int`, *optional*, defaults to 640):
            Side of the square canvas of the sliding window.
        sliding_tile_size (`int`, *optional*, defaults to 384):
            Side of the tiles and of the global view.
        sliding_stride (`int`, *optional*, defaults to 256):
            Stride of the tiles (the official `int(384 * (1 - 0.333))`). `canvas - tile` must be a multiple of it.
        max_image_pixels (`int`, *optional*, defaults to 100_000_000):
            Images with more pixels (height x width) than this are refused with an error instead of processed:
            processing holds one float32 copy of the image at full resolution (12 bytes per pixel for RGB, 1.2 GB at
            the limit). Downscale larger images first, or raise the limit; 0: no limit.
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Whether to convert every image to 3 channels (grayscale replicated, alpha dropped). With `False` the
            channels are kept as given, and `image_mean`/`image_std` must have one value per channel (or one).
        do_rescale (`bool`, *optional*, defaults to `False`):
            Whether to multiply the 0-255 pixel values by `rescale_factor` just before normalising them. Off by
            default, as CAT-Seg's mean and standard deviation are on the 0-255 scale.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            The factor of `do_rescale`.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to subtract `image_mean` and divide by `image_std`.
        data_format (`str`, *optional*, defaults to `"channels_first"`):
            Layout of `pixel_values`: `"channels_first"` (what the model takes) or `"channels_last"`.
        input_data_format (`str`, *optional*):
            Layout of array inputs, `"channels_first"` or `"channels_last"`; inferred from the shape when unset.
        device (`str` or `torch.device`, *optional*):
            Where the arithmetic runs (default: CPU); the returned tensors stay there.
        return_tensors (`str`, *optional*):
            `"pt"`, `"np"`, or `None` for a list with one tensor per image.
    """

    # Saved folders carry this file and an `auto_map`, so they load with `trust_remote_code=True` anywhere.
    _auto_class = "AutoImageProcessor"

    model_input_names = ["pixel_values"]
    valid_kwargs = CATSegImageProcessorKwargs

    # Defaults, as class attributes (the transformers 5 convention); an instance keeps only what it was given.
    clip_resolution = 384
    image_mean = CLIP_IMAGE_MEAN
    image_std = CLIP_IMAGE_STD
    size_divisibility = 32
    mode = "sliding"
    sliding_canvas_size = 640
    sliding_tile_size = 384
    sliding_stride = 256
    max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
    do_convert_rgb = True
    do_rescale = False
    rescale_factor = 1 / 255
    do_normalize = True
    data_format = "channels_first"
    input_data_format = None
    device = None
    return_tensors = None

    def __init__(self, **kwargs: Unpack[CATSegImageProcessorKwargs]) -> None:
        # Keys that are not settings (a saved configuration's bookkeeping, or attributes someone set and saved) are
        # kept as plain attributes, as transformers does, so that such configurations still load; they do not change
        # the processing, which the warning says for anything but the bookkeeping.
        valid = set(self.valid_kwargs.__annotations__)
        extra = {key: kwargs.pop(key) for key in list(kwargs) if key not in valid}
        ignored = sorted(set(extra) - set(_CONFIG_BOOKKEEPING_KEYS))
        if ignored:
            logger.warning(
                f"{type(self).__name__} keeps {ignored} as attributes, but they are not settings of it and do not "
                f"change the processing; its settings are {sorted(valid - set(_UNSUPPORTED_IMAGES_KWARGS))}."
            )
        settings = self._resolve_settings(kwargs, f"{type(self).__name__}()")
        super().__init__(**extra)
        # Every setting is stored on the instance, so that `to_dict` / `save_pretrained` write all of them.
        for key, value in settings.items():
            setattr(self, key, value)

    @property
    def num_views(self) -> int:
        """Views per image in sliding mode with the current settings: the tiles plus the global view."""
        canvas, tile, stride = self.sliding_canvas_size, self.sliding_tile_size, self.sliding_stride
        return num_views((canvas, canvas, tile, stride))

    # ------------------------------------------------------------------------------------------------ preprocessing
    def preprocess(self, images: Any, **kwargs: Unpack[CATSegImageProcessorKwargs]) -> BatchFeature:
        r"""
        Computes the CLIP views of one image or a list of images.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                The images; sizes may differ (each image is processed on its own). Arrays may be HWC or CHW
                (`input_data_format` settles ambiguous shapes; numpy defaults to HWC, torch to CHW), a 4-D array is
                a batch. Pixel values are on the 0-255 scale: uint8 as is, uint16 (and 16-bit PIL modes) divided by
                257, floats and other integers taken as 0-255. Float images with a NaN or infinite value are refused,
                and so are images above `max_image_pixels`.
            kwargs ([`CATSegImageProcessorKwargs`], *optional*):
                Per-call overrides of any setting of the processor (see the class docstring), e.g. `mode="whole"`,
                and `return_tensors`.

        Returns:
            [`BatchFeature`] with `pixel_values`: float32 `(batch, 3, clip_resolution, clip_resolution)` in whole mode,
            `(batch, num_views, 3, clip_resolution, clip_resolution)` in sliding mode (the tiles in row-major order,
            then the global view); with `return_tensors=None` a list of one such tensor per image (without the batch
            dimension).
        """
        settings = self._resolve_settings(kwargs, f"{type(self).__name__}.preprocess()")
        image_list = _as_image_list(images)
        if not image_list:
            raise ValueError(
                f"No image given (images={_short_repr(images)}): pass a PIL image, a numpy array, a torch tensor, or a "
                "non-empty list of them."
            )

        device = torch.device(settings["device"]) if settings["device"] is not None else torch.device("cpu")
        whole = settings["mode"] == "whole"
        views = []
        for index, image in enumerate(image_list):
            try:
                pixels, image_size = _load_image(
                    image,
                    settings["input_data_format"],
                    settings["do_convert_rgb"],
                    max_pixels=settings["max_image_pixels"],
                    # Whole mode pads after normalising; the zeros are written here, normalisation skips them.
                    size_divisibility=settings["size_divisibility"] if whole else 0,
                )
                mean, std = _normalisation(settings, pixels.shape[0], device)
            except (TypeError, ValueError) as err:
                raise type(err)(f"Image {index} of the batch: {err}") from err
            pixels = pixels.to(device)
            scale = settings["rescale_factor"] if settings["do_rescale"] else None
            if whole:
                resolution = (settings["clip_resolution"], settings["clip_resolution"])
                image_views = _whole_views(pixels.unsqueeze(0), [image_size], scale, mean, std, resolution)[0]
            else:
                image_views = _sliding_views(
                    pixels,
                    scale,
                    mean,
                    std,
                    settings["sliding_canvas_size"],
                    settings["sliding_tile_size"],
                    settings["sliding_stride"],
                    settings["clip_resolution"],
                )
            if settings["data_format"] == "channels_last":
                image_views = image_views.movedim(-3, -1)
            views.append(image_views)
            del pixels  # a 4000x3000 float image is ~140 MB: free it before the next one

        return_tensors = settings["return_tensors"]
        if return_tensors is None:
            return BatchFeature(data={"pixel_values": views})
        pixel_values = torch.stack(views)
        del views
        if return_tensors == "np":
            pixel_values = pixel_values.cpu().numpy()
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def preprocess_padded_batch(
        self,
        images: Any,
        clip_resolution: int | Sequence[int] | None = None,
        **kwargs: Unpack[CATSegImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Whole-mode views of a batch padded together, as the official training batches are made: every image is
        normalised, zero-padded bottom/right to the batch's largest height and width (each rounded up to a multiple
        of `size_divisibility`), and the padded batch is resized to the CLIP resolution. The same maths as
        `preprocess(..., mode="whole")`, which pads each image only to its own multiple.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                The images, as for [`~CATSegImageProcessor.preprocess`].
            clip_resolution (`int` or `tuple[int, int]`, *optional*, defaults to `self.clip_resolution`):
                Side, or `(height, width)`, of the resized batch.
            kwargs ([`CATSegImageProcessorKwargs`], *optional*):
                Per-call overrides of the other settings (`image_mean`, `image_std`, `size_divisibility`, ...);
                `mode` is always `"whole"`.

        Returns:
            [`BatchFeature`] with `pixel_values`, float32 `(batch, 3, height, width)` (channels first), and
            `padded_size`, the `(height, width)` the batch was padded to before resizing (training labels are padded
            to it).
        """
        if clip_resolution is None or isinstance(clip_resolution, (int, np.integer)):
            if clip_resolution is not None:
                kwargs["clip_resolution"] = int(clip_resolution)
            resolution = None
        else:
            resolution = tuple(int(v) for v in clip_resolution)
            if len(resolution) != 2 or min(resolution) <= 0:
                raise ValueError(f"clip_resolution must be an int or a positive (height, width), got {clip_resolution!r}.")
        settings = self._resolve_settings({**kwargs, "mode": "whole"}, f"{type(self).__name__}.preprocess_padded_batch()")
        if resolution is None:
            resolution = (settings["clip_resolution"], settings["clip_resolution"])
        image_list = _as_image_list(images)
        if not image_list:
            raise ValueError("Cannot make a batch of no images.")
        device = torch.device(settings["device"]) if settings["device"] is not None else torch.device("cpu")
        scale = settings["rescale_factor"] if settings["do_rescale"] else None
        loaded, image_sizes = [], []
        for index, image in enumerate(image_list):
            try:
                pixels, image_size = _load_image(
                    image, settings["input_data_format"], settings["do_convert_rgb"], settings["max_image_pixels"]
                )
                if loaded and pixels.shape[0] != loaded[0].shape[0]:
                    raise ValueError(f"it has {pixels.shape[0]} channels, image 0 has {loaded[0].shape[0]}.")
            except (TypeError, ValueError) as err:
                raise type(err)(f"Image {index} of the batch: {err}") from err
            loaded.append(pixels)
            image_sizes.append(image_size)
        mean, std = _normalisation(settings, loaded[0].shape[0], device)
        padded_size = _padded_size(image_sizes, settings["size_divisibility"])
        batch = torch.zeros(len(loaded), loaded[0].shape[0], *padded_size, dtype=torch.float32, device=device)
        for target, pixels, (height, width) in zip(batch, loaded, image_sizes):
            target[:, :height, :width] = pixels
        del loaded
        pixel_values = _whole_views(batch, image_sizes, scale, mean, std, resolution)
        if settings["data_format"] == "channels_last":
            pixel_values = pixel_values.movedim(-3, -1)
        return BatchFeature(data={"pixel_values": pixel_values, "padded_size": padded_size})

    def _resolve_settings(self, kwargs: dict[str, Any], caller: str) -> dict[str, Any]:
        """The settings of one call (or of `__init__`): `kwargs` over this instance's, checked and normalised."""
        valid = set(self.valid_kwargs.__annotations__)
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise TypeError(
                f"{caller} got unexpected keyword argument(s) {unknown}. Its settings are "
                f"{sorted(valid - set(_UNSUPPORTED_IMAGES_KWARGS))}."
            )
        unsupported = [key for key in kwargs if key in _UNSUPPORTED_IMAGES_KWARGS and kwargs[key] is not None]
        if unsupported:
            details = "; ".join(f"`{key}`: {_UNSUPPORTED_IMAGES_KWARGS[key]}" for key in unsupported)
            raise ValueError(f"{caller} does not support {unsupported} (CAT-Seg's views are fixed): {details}.")

        settings = {}
        for key in sorted(valid - set(_UNSUPPORTED_IMAGES_KWARGS)):
            value = kwargs[key] if key in kwargs else getattr(self, key)
            if value is None and (key in _INT_SETTINGS or key in ("mode", "image_mean", "image_std")):
                value = getattr(type(self), key)  # None asks for the default of CAT-Seg's own settings
            settings[key] = value

        for key in _INT_SETTINGS:
            value = settings[key]
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)) or value != int(value):
                raise ValueError(f"{key} must be an integer, got {value!r}.")
            settings[key] = int(value)
        if not isinstance(settings["mode"], str):
            raise ValueError(f"mode must be one of {PROCESSING_MODES}, got {settings['mode']!r}.")
        for key in ("image_mean", "image_std"):
            value = settings[key]
            settings[key] = float(value) if isinstance(value, (int, float)) else [float(v) for v in value]
        if settings["rescale_factor"] is not None:
            settings["rescale_factor"] = float(settings["rescale_factor"])
        for key in ("data_format", "input_data_format", "return_tensors"):
            # Enums (ChannelDimension, TensorType) compare by their string value.
            settings[key] = getattr(settings[key], "value", settings[key])
        if settings["data_format"] is None:
            settings["data_format"] = "channels_first"

        _validate_settings(
            mode=settings["mode"],
            clip_resolution=settings["clip_resolution"],
            image_mean=settings["image_mean"],
            image_std=settings["image_std"],
            size_divisibility=settings["size_divisibility"],
            canvas=settings["sliding_canvas_size"],
            tile=settings["sliding_tile_size"],
            stride=settings["sliding_stride"],
            max_image_pixels=settings["max_image_pixels"],
        )
        if settings["do_rescale"] and settings["rescale_factor"] is None:
            raise ValueError("do_rescale=True needs a rescale_factor.")
        if settings["data_format"] not in _DATA_FORMATS:
            raise ValueError(f"data_format must be one of {_DATA_FORMATS}, got {settings['data_format']!r}.")
        if settings["input_data_format"] not in (None, *_DATA_FORMATS):
            raise ValueError(
                f"input_data_format must be None or one of {_DATA_FORMATS}, got {settings['input_data_format']!r}."
            )
        if settings["return_tensors"] not in _RETURN_TENSORS:
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {settings['return_tensors']!r}.")
        return settings

    # ---------------------------------------------------------------------------------------------- postprocessing
    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
        image_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        return_probabilities: bool | None = None,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        r"""
        Turns the logits of [`CATSegForSemanticSegmentation`] into one label map per image.

        Whole mode (4-D logits): sigmoid, then bilinear resize to the target size. Sliding mode (5-D logits): the
        logits of the tiles and of the global view are resized to the tile size and passed through a sigmoid; the
        tiles are folded back onto the canvas (overlaps averaged), averaged with the global view resized to the
        canvas, and the result is resized to the target size. The label of a pixel is the arg-max over classes.

        The sliding window is the one of this processor's settings (`sliding_canvas_size`, `sliding_tile_size`,
        `sliding_stride`): post-process with the processor that made the inputs.

        Args:
            outputs ([`CATSegSemanticSegmenterOutput`] or `torch.Tensor`):
                The model output (or a dict) with `logits`, or the logits themselves: `(batch, num_classes, height,
                width)` for whole-mode inputs, `(batch, num_views, num_classes, height, width)` for sliding-mode ones.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape `(batch, 2)`, *optional*):
                The `(height, width)` of each output map, usually the size of each original image. Defaults to the
                canvas size (sliding) or the logits size (whole).
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Whether to also return the per-class scores: the probabilities the official implementation outputs.
            image_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape `(batch, 2)`, *optional*):
                The `(height, width)` of each image as given to the processor. In whole mode the probability map is
                first cropped to it, as the official post-processing does (a no-op unless the image is smaller than
                the logits map); not used in sliding mode.
            return_probabilities (`bool`, *optional*):
                Deprecated: use `return_segmentation_scores`. `True` returns dicts with `"segmentation"` and
                `"probabilities"`.

        Returns:
            `list[torch.Tensor]` or `list[SemanticSegmentationPostProcessorOutput]`: one int64 `(height, width)` label
            map per image; with `return_segmentation_scores=True`, one
            [`~image_processing_outputs.SemanticSegmentationPostProcessorOutput`] per image with `segmentation`
            (int64 `(height, width)`) and `segmentation_scores` (float32 `(num_classes, height, width)` probabilities).
        """
        canvas, tile, stride = self.sliding_canvas_size, self.sliding_tile_size, self.sliding_stride
        return post_process_semantic_segmentation(
            outputs,
            (canvas, tile, stride),
            target_sizes=target_sizes,
            return_segmentation_scores=return_segmentation_scores,
            image_sizes=image_sizes,
            return_probabilities=return_probabilities,
        )


# ==================================================================================================== helpers
def _validate_settings(
    mode: str,
    clip_resolution: int,
    image_mean: float | Sequence[float],
    image_std: float | Sequence[float],
    size_divisibility: int,
    canvas: int,
    tile: int,
    stride: int,
    max_image_pixels: int = 0,
) -> None:
    if mode not in PROCESSING_MODES:
        raise ValueError(f"mode must be one of {PROCESSING_MODES}, got {mode!r}.")
    if clip_resolution <= 0:
        raise ValueError(f"clip_resolution must be positive, got {clip_resolution}.")
    means = [image_mean] if isinstance(image_mean, float) else list(image_mean)
    stds = [image_std] if isinstance(image_std, float) else list(image_std)
    if not means or not stds:
        raise ValueError(f"image_mean and image_std need one value per channel, got {image_mean} and {image_std}.")
    if min(stds) <= 0:
        raise ValueError(f"image_std values must be positive, got {image_std}.")
    if size_divisibility < 0:
        raise ValueError(f"size_divisibility must be >= 0 (0 or 1: no padding), got {size_divisibility}.")
    if max_image_pixels < 0:
        raise ValueError(f"max_image_pixels must be >= 0 (0: no limit), got {max_image_pixels}.")
    if mode == "sliding":
        check_sliding_window(canvas, tile, stride)


def _normalisation(
    settings: dict[str, Any], num_channels: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The mean and std as `(C, 1, 1)` float32 tensors (None when not normalising), checked against the channels."""
    if not settings["do_normalize"]:
        return None, None
    tensors = []
    for key in ("image_mean", "image_std"):
        values = settings[key]
        values = [values] if isinstance(values, float) else values
        if len(values) not in (1, num_channels):
            raise ValueError(
                f"The image has {num_channels} channels but {key} has {len(values)} values {values}; give one value "
                "per channel (or one for all)."
            )
        # torch.tensor(list) in float32, then view(-1, 1, 1): the same values the official code normalises with.
        tensors.append(torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1))
    return tensors[0], tensors[1]


def _rescale_and_normalise(
    pixels: torch.Tensor, scale: float | None, mean: torch.Tensor | None, std: torch.Tensor | None
) -> torch.Tensor:
    # Without rescaling this is exactly the official `(x - mean) / std`.
    if scale is not None:
        pixels = pixels * scale
    if mean is not None:
        pixels = (pixels - mean) / std
    return pixels


def _rescale_and_normalise_(
    pixels: torch.Tensor, scale: float | None, mean: torch.Tensor | None, std: torch.Tensor | None
) -> None:
    """`_rescale_and_normalise` in place: the same elementwise operations, so the same values."""
    if scale is not None:
        pixels.mul_(scale)
    if mean is not None:
        pixels.sub_(mean).div_(std)


def _whole_views(
    batch: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    scale: float | None,
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
    resolution: tuple[int, int],
) -> torch.Tensor:
    """Official non-sliding path: normalise, zero-pad bottom/right, resize to the CLIP resolution.

    `batch` `(B, C, H', W')` arrives already padded with zeros, image `i` in its top-left `image_sizes[i]`:
    normalising only the images in place leaves the padding at 0 in normalised space, as detectron2's
    `ImageList.from_tensors` pads after normalising, with the same values as the out-of-place official expressions
    and no second full-resolution copy. One image padded to its own multiple is inference
    ([`~CATSegImageProcessor.preprocess`]); several padded to the batch's largest is training
    ([`~CATSegImageProcessor.preprocess_padded_batch`])."""
    for pixels, (height, width) in zip(batch, image_sizes):
        _rescale_and_normalise_(pixels[:, :height, :width], scale, mean, std)
    return F.interpolate(batch, size=resolution, mode="bilinear", align_corners=False)


def _sliding_views(
    pixels: torch.Tensor,
    scale: float | None,
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
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
    views = _rescale_and_normalise(torch.cat([torch.stack(tiles), global_view], dim=0), scale, mean, std)
    # A same-size bilinear resize is an exact copy (384 for ViT-B); 336 for ViT-L.
    return F.interpolate(views, size=(clip_resolution, clip_resolution), mode="bilinear", align_corners=False)


__all__ = [
    "CATSegImageProcessor",
    "CATSegImageProcessorKwargs",
    "CLIP_IMAGE_MEAN",
    "CLIP_IMAGE_STD",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "PROCESSING_MODES",
]
