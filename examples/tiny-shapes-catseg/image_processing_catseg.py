"""Image processor for CAT-Seg: CLIP views of each image, and the sliding-window/whole-image post-processing.

This file must only import torch, numpy, PIL, transformers and (relatively) our own processing files: it is copied
into saved model folders so that they load with `trust_remote_code=True` where `catseg_hf` is not installed.
"""

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs, Unpack
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
# Images are converted to float32 this many pixels at a time where the input allows it (PIL images, band by band),
# so that no full-resolution temporary besides the float32 image itself is made.
_LOAD_BAND_PIXELS = 4 * 1024 * 1024
# Default of `max_image_pixels`: a float32 RGB copy of an image this large is 1.2 GB. PIL's own decompression-bomb
# limit (89 megapixels warns, 179 refuse) protects only images loaded through PIL; this one protects the arrays.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000

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
        return _num_views((canvas, canvas, tile, stride))

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
        if return_probabilities is not None:
            warnings.warn(
                "`return_probabilities` is deprecated and will be removed in the next release: use "
                "`return_segmentation_scores=True`, whose `segmentation_scores` are the same probabilities.",
                FutureWarning,
                stacklevel=2,
            )
            if return_probabilities and return_segmentation_scores:
                raise ValueError("Pass only `return_segmentation_scores=True` (`return_probabilities` is deprecated).")
        logits = _get_field(outputs, "logits")
        if not isinstance(logits, torch.Tensor):
            raise ValueError(
                "post_process_semantic_segmentation needs the model's `logits` (an output object or dict with a "
                "`logits` tensor, or the logits tensor itself)."
            )
        if logits.ndim == 4:
            layout = (0, 0, 0, 0)
        elif logits.ndim == 5:
            canvas, tile, stride = self.sliding_canvas_size, self.sliding_tile_size, self.sliding_stride
            _validate_settings("sliding", 1, [0.0], [1.0], 0, canvas, tile, stride)
            layout = (canvas, canvas, tile, stride)
            if logits.shape[1] != _num_views(layout):
                raise ValueError(
                    f"The sliding-mode logits hold {logits.shape[1]} views per image, but this processor's sliding "
                    f"window (sliding_canvas_size={canvas}, sliding_tile_size={tile}, sliding_stride={stride}) has "
                    f"{_num_views(layout)}; post-process with the settings the inputs were made with."
                )
        else:
            raise ValueError(
                "logits must be (batch, num_classes, height, width) for whole mode or (batch, num_views, "
                f"num_classes, height, width) for sliding mode, got shape {tuple(logits.shape)}."
            )
        if not bool(torch.isfinite(logits).all()):
            # A sigmoid of NaN is NaN, and an arg-max over NaN picks class 0 everywhere: a confident-looking map.
            non_finite = (~torch.isfinite(logits)).flatten(1).sum(dim=1)
            images = non_finite.nonzero().flatten().tolist()
            raise ValueError(
                f"The logits contain {int(non_finite.sum())} NaN or infinite value(s) of {logits.numel()} (in "
                f"image(s) {images[:10]}{' ...' if len(images) > 10 else ''} of the batch), so no segmentation can "
                "be read from them; check the model's inputs and dtype (e.g. float16 overflow)."
            )

        num_images = logits.shape[0]
        if target_sizes is not None:
            target_sizes = _as_size_list(target_sizes, "target_sizes")
            if len(target_sizes) != num_images:
                raise ValueError(
                    f"target_sizes has {len(target_sizes)} entries but the logits hold {num_images} images; pass one "
                    "(height, width) per image."
                )
        else:
            default = layout[:2] if any(layout) else tuple(logits.shape[-2:])
            target_sizes = [tuple(default)] * num_images
        if image_sizes is not None:
            image_sizes = _as_size_list(image_sizes, "image_sizes")
            if len(image_sizes) != num_images:
                raise ValueError(
                    f"image_sizes has {len(image_sizes)} entries but the logits hold {num_images} images; pass one "
                    "(height, width) per image."
                )

        want_scores = bool(return_segmentation_scores or return_probabilities)
        results = []
        for index in range(num_images):
            # Whole mode: one view of shape (1, T, h, w); sliding mode: (num_views, T, h, w).
            image_logits = logits[index] if any(layout) else logits[index : index + 1]
            input_size = image_sizes[index] if image_sizes is not None and not any(layout) else None
            result = _postprocess_one(image_logits, layout, target_sizes[index], want_scores, input_size)
            if return_segmentation_scores:
                result = SemanticSegmentationPostProcessorOutput(
                    data={"segmentation": result["segmentation"], "segmentation_scores": result["probabilities"]}
                )
            results.append(result)
        return results


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


def _padded_size(sizes: Sequence[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    """The largest height and width of `sizes`, each rounded up to a multiple of `size_divisibility` (> 1)."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    if size_divisibility > 1:
        height = math.ceil(height / size_divisibility) * size_divisibility
        width = math.ceil(width / size_divisibility) * size_divisibility
    return height, width


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
                view_probabilities(num_tiles).unsqueeze(0),
                size=(canvas_h, canvas_w),
                mode="bilinear",
                align_corners=False,
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


__all__ = [
    "CATSegImageProcessor",
    "CATSegImageProcessorKwargs",
    "CLIP_IMAGE_MEAN",
    "CLIP_IMAGE_STD",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "PROCESSING_MODES",
]
