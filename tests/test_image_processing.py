"""CATSegImageProcessor: parity with the official glue, input kinds, modes, kwargs, post-processing, save/load."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.modeling_outputs import SemanticSegmenterOutput

import catseg_hf.image_processing_catseg as ipmod
import catseg_hf.post_processing_catseg as ppmod
from catseg_hf import CATSegImageProcessor

TOL = 1e-5


@pytest.fixture(scope="module")
def processor() -> CATSegImageProcessor:
    return CATSegImageProcessor(return_tensors="pt")


def _random_uint8(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- official fixture parity
@pytest.mark.parametrize("key", ["img0", "img1"])
def test_whole_mode_matches_official_clip_input(processor, official_io, key: str) -> None:
    out = processor(official_io[f"{key}.image"], mode="whole")
    expected = official_io[f"{key}.clip_input"]
    assert set(out.keys()) == {"pixel_values"}
    assert out["pixel_values"].dtype == torch.float32 and out["pixel_values"].shape == expected.shape
    assert (out["pixel_values"] - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("key", ["img0", "img1"])
def test_whole_mode_post_processing_matches_official(processor, official_io, key: str) -> None:
    outputs = SemanticSegmenterOutput(logits=official_io[f"{key}.logits96.pool1x1"])
    target = [official_io[f"{key}.out_hw"].tolist()]
    image_sizes = [list(official_io[f"{key}.image"].shape[-2:])]
    result = processor.post_process_semantic_segmentation(
        outputs, target_sizes=target, return_segmentation_scores=True, image_sizes=image_sizes
    )
    expected = official_io[f"{key}.infer.pool1x1"]
    assert len(result) == 1 and isinstance(result[0], SemanticSegmentationPostProcessorOutput)
    probabilities, segmentation = result[0].segmentation_scores, result[0].segmentation
    assert probabilities.dtype == torch.float32 and probabilities.shape == expected.shape
    assert (probabilities - expected).abs().max().item() <= TOL
    assert segmentation.dtype == torch.int64 and torch.equal(segmentation, expected.argmax(0))
    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=target, image_sizes=image_sizes)
    assert torch.equal(labels[0], segmentation)
    # The fixture images are larger than the logits map, so the crop to the image size is a no-op here.
    assert torch.equal(processor.post_process_semantic_segmentation(outputs, target_sizes=target)[0], segmentation)


def test_sliding_post_processing_matches_official(processor, official_io) -> None:
    views = official_io["img0.sliding.logits96.pool1x1"]  # (5 views, T, h, w) of one image
    outputs = SemanticSegmenterOutput(logits=views.unsqueeze(0))
    target = [official_io["img0.out_hw"].tolist()]
    result = processor.post_process_semantic_segmentation(
        outputs, target_sizes=target, return_segmentation_scores=True
    )
    expected = official_io["img0.sliding.pool1x1"]
    assert (result[0].segmentation_scores - expected).abs().max().item() <= TOL
    assert torch.equal(result[0].segmentation, expected.argmax(0))
    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=target)
    assert torch.equal(labels[0], expected.argmax(0))
    # image_sizes only matters in whole mode.
    with_sizes = processor.post_process_semantic_segmentation(outputs, target_sizes=target, image_sizes=[(480, 640)])
    assert torch.equal(with_sizes[0], labels[0])


def test_sliding_views_follow_the_official_recipe(processor, official_io) -> None:
    image = official_io["img0.image"]
    out = processor(image)  # sliding is the default
    assert set(out.keys()) == {"pixel_values"} and out["pixel_values"].shape == (1, 5, 3, 384, 384)
    # Independent restatement: unfold of the 640x640 canvas, global view last, CLIP normalisation.
    canvas = torch.nn.functional.interpolate(image[None], size=(640, 640), mode="bilinear", align_corners=False)
    tiles = torch.nn.functional.unfold(canvas, kernel_size=384, stride=256)[0].T.reshape(4, 3, 384, 384)
    global_view = torch.nn.functional.interpolate(image[None], size=(384, 384), mode="bilinear", align_corners=False)
    mean = torch.tensor(ipmod.CLIP_IMAGE_MEAN).view(-1, 1, 1)
    std = torch.tensor(ipmod.CLIP_IMAGE_STD).view(-1, 1, 1)
    expected = (torch.cat([tiles, global_view]) - mean) / std
    assert torch.equal(out["pixel_values"][0], expected)


# ------------------------------------------------------------------------------------------------ sizes and modes
@pytest.mark.parametrize("size", [(1, 1), (15, 17), (33, 65)])
@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_small_and_odd_sizes(processor, size, mode: str) -> None:
    out = processor(_random_uint8(*size), mode=mode)
    assert out["pixel_values"].shape == ((1, 3, 384, 384) if mode == "whole" else (1, 5, 3, 384, 384))
    assert torch.isfinite(out["pixel_values"]).all()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to sample memory")
def test_large_image_memory(processor) -> None:
    image = Image.fromarray(_random_uint8(3000, 4000))  # 4000x3000 (w x h), 36 MB of uint8
    baseline = _rss_bytes()
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        whole = processor(image, mode="whole")
        sliding = processor(image, mode="sliding")
    finally:
        stop.set()
        sampler.join()
    assert whole["pixel_values"].shape == (1, 3, 384, 384) and sliding["pixel_values"].shape == (1, 5, 3, 384, 384)
    # A float32 copy of the image is 144 MB; a few of them at once is fine, GBs are not.
    assert peak[0] - baseline < 1.0 * 1024**3, f"peak memory grew by {(peak[0] - baseline) / 2**20:.0f} MB"


def test_other_clip_resolution_and_sliding_geometry() -> None:
    vit_l = CATSegImageProcessor(clip_resolution=336)
    assert vit_l(_random_uint8(40, 50), return_tensors="pt")["pixel_values"].shape == (1, 5, 3, 336, 336)
    assert vit_l(_random_uint8(40, 50), mode="whole", return_tensors="pt")["pixel_values"].shape == (1, 3, 336, 336)
    small = CATSegImageProcessor(sliding_canvas_size=96, sliding_tile_size=64, sliding_stride=16, clip_resolution=32)
    out = small(_random_uint8(40, 50), return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3 * 3 + 1, 3, 32, 32) and small.num_views == 10


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="multiple of the stride"):
        CATSegImageProcessor(sliding_stride=300)
    with pytest.raises(ValueError, match="mode must be one of"):
        CATSegImageProcessor(mode="tiles")
    with pytest.raises(ValueError, match="tile <= canvas"):
        CATSegImageProcessor(sliding_canvas_size=256)
    processor = CATSegImageProcessor()
    with pytest.raises(ValueError, match="mode must be one of"):
        processor(_random_uint8(8, 8), mode="slide")
    with pytest.raises(ValueError, match="No image"):
        processor([])


# ------------------------------------------------------------------------------------------------------ input kinds
def test_pil_numpy_torch_inputs_agree(processor) -> None:
    array = _random_uint8(21, 34)
    reference = processor(array, mode="whole")["pixel_values"]
    candidates = {
        "pil": Image.fromarray(array),
        "numpy_chw": np.ascontiguousarray(array.transpose(2, 0, 1)),
        "numpy_float": array.astype(np.float64),
        "torch_uint8": torch.from_numpy(array.transpose(2, 0, 1).copy()),
        "torch_float": torch.from_numpy(array.transpose(2, 0, 1).copy()).float(),
    }
    for name, image in candidates.items():
        assert torch.equal(processor(image, mode="whole")["pixel_values"], reference), name


def test_ambiguous_layout_resolved_by_input_data_format(processor) -> None:
    array = _random_uint8(3, 3, seed=1)  # (3, 3, 3): numpy defaults to HWC
    hwc = processor(array, mode="whole")["pixel_values"]
    as_chw = processor(array.transpose(2, 0, 1).copy(), mode="whole", input_data_format="channels_first")
    assert torch.equal(as_chw["pixel_values"], hwc)
    assert torch.equal(processor(torch.from_numpy(array.transpose(2, 0, 1).copy()), mode="whole")["pixel_values"], hwc)


def test_alpha_and_grayscale_and_palette(processor) -> None:
    rgb = _random_uint8(19, 23)
    reference = processor(rgb, mode="whole")["pixel_values"]
    alpha = np.full((19, 23, 1), 7, dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([rgb, alpha], axis=-1))
    assert rgba.mode == "RGBA"
    assert torch.equal(processor(rgba, mode="whole")["pixel_values"], reference)
    assert torch.equal(processor(np.concatenate([rgb, alpha], axis=-1), mode="whole")["pixel_values"], reference)

    gray = rgb[..., 0]
    gray_as_rgb = processor(np.repeat(gray[..., None], 3, axis=-1), mode="whole")["pixel_values"]
    for image in (Image.fromarray(gray), gray, gray[..., None], Image.fromarray(gray).convert("LA")):
        assert torch.equal(processor(image, mode="whole")["pixel_values"], gray_as_rgb)

    palette = Image.fromarray(rgb).convert("P")
    expected = processor(palette.convert("RGB"), mode="whole")["pixel_values"]
    assert torch.equal(processor(palette, mode="whole")["pixel_values"], expected)


def test_sixteen_bit_inputs(processor) -> None:
    gray8 = _random_uint8(17, 29, channels=1)[..., 0]
    expected = processor(gray8, mode="whole")["pixel_values"]
    gray16 = gray8.astype(np.uint16) * 257  # 16-bit value v * 257 is 8-bit value v
    assert torch.equal(processor(gray16, mode="whole")["pixel_values"], expected)
    pil16 = Image.fromarray(gray16)
    assert pil16.mode == "I;16"
    assert torch.equal(processor(pil16, mode="whole")["pixel_values"], expected)
    pil32 = Image.fromarray(gray16.astype(np.int32))
    assert pil32.mode == "I"
    assert torch.equal(processor(pil32, mode="whole")["pixel_values"], expected)
    rgb16 = np.repeat(gray16[..., None], 3, axis=-1)
    assert torch.equal(processor(rgb16, mode="whole")["pixel_values"], expected)


def test_bad_inputs(processor) -> None:
    with pytest.raises(TypeError, match="Unsupported image type"):
        processor("not an image")
    with pytest.raises(ValueError, match="channels"):
        processor(np.zeros((10, 10, 5), dtype=np.uint8), input_data_format="channels_last")
    with pytest.raises(ValueError, match="channel axis"):
        processor(np.zeros((10, 11, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match="Image 1 of the batch"):
        processor([np.zeros((4, 4, 3), np.uint8), np.zeros((2, 3, 4, 5, 6), np.uint8)])


def test_mixed_size_batches(processor) -> None:
    images = [_random_uint8(30, 40, seed=1), _random_uint8(64, 31, seed=2), _random_uint8(5, 9, seed=3)]
    for mode, shape in (("whole", (3, 3, 384, 384)), ("sliding", (3, 5, 3, 384, 384))):
        batch = processor(images, mode=mode)
        singles = [processor(image, mode=mode)["pixel_values"] for image in images]
        assert batch["pixel_values"].shape == shape
        assert torch.equal(batch["pixel_values"], torch.cat(singles))
        as_list = processor(images, mode=mode, return_tensors=None)["pixel_values"]
        assert isinstance(as_list, list) and all(torch.equal(a, b[0]) for a, b in zip(as_list, singles))
    stacked = torch.from_numpy(np.stack([_random_uint8(12, 14, seed=s) for s in range(2)])).permute(0, 3, 1, 2)
    out = processor(stacked, mode="whole")  # a 4-D tensor is a batch
    assert out["pixel_values"].shape == (2, 3, 384, 384)


def test_zero_to_one_float_images_warn(processor, caplog) -> None:
    import logging

    # warning_once caches per process; forget earlier emissions so the test does not depend on test order.
    if hasattr(ipmod.logger.warning_once, "cache_clear"):
        ipmod.logger.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        processor(torch.rand(3, 8, 8), mode="whole")
    assert "0-255" in caplog.text


def test_numpy_return_tensors(processor) -> None:
    out = processor(_random_uint8(10, 12), return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].dtype == np.float32
    assert out["pixel_values"].shape == (1, 5, 3, 384, 384)


# --------------------------------------------------------------------------------------------------- errors and limits
def _with_non_finite(kind: str, bad: float) -> object:
    array = _random_uint8(12, 20).astype(np.float32)
    array[3, 4, 1] = bad  # one value of one pixel
    array[7, 0, :] = bad  # all values of another
    if kind == "numpy64":
        return array.astype(np.float64)
    if kind == "torch16":
        return torch.from_numpy(array).permute(2, 0, 1).half()
    if kind == "torch":
        return torch.from_numpy(array).permute(2, 0, 1)
    if kind == "pil_f":
        return Image.fromarray(array[..., 1])
    return array


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("kind", ["numpy", "numpy64", "torch", "torch16", "pil_f"])
@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_non_finite_pixels_are_refused(processor, kind: str, bad: float, mode: str) -> None:
    image = _with_non_finite(kind, bad)
    match = "Image 1 of the batch: 2 of its 240 pixels are NaN or infinite.*row 3, column 4"
    with pytest.raises(ValueError, match=match):
        processor([_random_uint8(8, 8), image], mode=mode)


def test_non_finite_values_beyond_float32_and_in_dropped_channels(processor) -> None:
    huge = _random_uint8(6, 7).astype(np.float64)
    huge[2, 3, 0] = 1e300  # finite in float64, infinite once in float32
    with pytest.raises(ValueError, match="Image 0 of the batch: 1 of its 42 pixels are NaN or infinite"):
        processor(huge)
    # Only the channels that are used count: a NaN alpha is dropped with the alpha.
    rgba = np.concatenate([_random_uint8(6, 7), np.full((6, 7, 1), 9)], axis=-1).astype(np.float32)
    reference = processor(rgba[..., :3], mode="whole")["pixel_values"]
    rgba[..., 3] = np.nan
    assert torch.equal(processor(rgba, mode="whole")["pixel_values"], reference)
    with pytest.raises(ValueError, match="42 of its 42 pixels"):
        processor(rgba, mode="whole", do_convert_rgb=False, image_mean=[0.0] * 4, image_std=[1.0] * 4)


def test_images_above_the_pixel_limit_are_refused(processor) -> None:
    # 20000 x 20000 x 3 bytes that take no memory: the refusal must come before any copy of it.
    huge = np.broadcast_to(np.uint8(7), (20000, 20000, 3))
    for mode in ("whole", "sliding"):
        with pytest.raises(ValueError, match=r"Image 0 of the batch: The image is 20000x20000 pixels \(400.0 megap"):
            processor(huge, mode=mode)
    with pytest.raises(ValueError, match=r"max_image_pixels=100000000 \(100 megapixels\).*Downscale it"):
        processor(torch.zeros(3, 1, 1, dtype=torch.uint8).expand(3, 20000, 20000))
    # The limit is a setting (per call or of the processor, saved with it); 0 means no limit.
    pil = Image.fromarray(_random_uint8(50, 100))
    with pytest.raises(ValueError, match=r"100x50 pixels .*max_image_pixels=4999"):
        processor(pil, max_image_pixels=4999)
    assert processor(pil, max_image_pixels=5000)["pixel_values"].shape == (1, 5, 3, 384, 384)
    small_limit = CATSegImageProcessor(max_image_pixels=100)
    with pytest.raises(ValueError, match="max_image_pixels=100 "):
        small_limit(_random_uint8(10, 11))
    assert small_limit(_random_uint8(10, 11), max_image_pixels=0)["pixel_values"][0].shape == (5, 3, 384, 384)
    assert CATSegImageProcessor.max_image_pixels == ipmod.DEFAULT_MAX_IMAGE_PIXELS == 100_000_000
    with pytest.raises(ValueError, match="max_image_pixels must be >= 0.*-1"):
        CATSegImageProcessor(max_image_pixels=-1)


_PEAK_MEMORY_SCRIPT = """
import resource, sys
import numpy as np
from catseg_hf import CATSegImageProcessor

mode, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
processor = CATSegImageProcessor(return_tensors="pt")
processor(np.zeros((40, 50, 3), np.uint8), mode=mode)  # load the kernels before measuring
row = np.random.default_rng(0).integers(0, 256, size=(1, width, 3), dtype=np.uint8)
image = np.broadcast_to(row, (height, width, 3))  # the input itself takes no memory
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
processor(image, mode=mode)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux")
@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_peak_memory_is_one_float32_copy(mode: str) -> None:
    # A fresh process, so that the high-water mark of resident memory is this image's. The float32 RGB copy of a
    # 3000 x 4000 image is 144 MB; the official chain of out-of-place operations held four of them in whole mode.
    height, width = 3000, 4000
    float_copy = 12 * height * width
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY_SCRIPT, mode, str(height), str(width)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    growth = int(result.stdout.split()[-1]) * 1024
    assert growth < 1.25 * float_copy + 48 * 2**20, f"peak grew by {growth / 2**20:.0f} MiB"


def test_pil_modes(processor) -> None:
    gray = _random_uint8(19, 23, channels=1)[..., 0]
    gray_as_rgb = processor(np.repeat(gray[..., None], 3, axis=-1), mode="whole")["pixel_values"]
    alpha = np.full_like(gray, 255)
    la = Image.fromarray(np.stack([gray, alpha], axis=-1), "LA")
    # "La" (premultiplied alpha): with an opaque alpha the gray values are the image's.
    for image in (la, la.convert("La"), Image.fromarray(gray).convert("PA")):
        assert torch.equal(processor(image, mode="whole")["pixel_values"], gray_as_rgb), image.mode
    translucent = Image.fromarray(np.stack([gray, np.full_like(gray, 128)], axis=-1), "LA").convert("La")
    expected = processor(translucent.convert("LA"), mode="whole")["pixel_values"]
    assert torch.equal(processor(translucent, mode="whole")["pixel_values"], expected)

    rgb = _random_uint8(19, 23)
    palette = Image.fromarray(rgb).convert("P")
    palette.info["transparency"] = 0
    expected = processor(palette.convert("RGBA"), mode="whole")["pixel_values"]
    assert torch.equal(processor(palette, mode="whole")["pixel_values"], expected)
    binary = Image.fromarray(gray > 100)
    assert binary.mode == "1"
    expected = processor(np.where(gray > 100, 255, 0).astype(np.uint8), mode="whole")["pixel_values"]
    assert torch.equal(processor(binary, mode="whole")["pixel_values"], expected)


def test_sixteen_bit_png_keeps_its_range(processor, tmp_path: Path) -> None:
    # A 16-bit PNG as PIL saves one: its values are divided by 257 onto 0-255, not clipped to 255.
    values = np.linspace(0, 65535, 24 * 24).round().astype(np.uint16).reshape(24, 24)
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    loaded = Image.open(tmp_path / "sixteen.png")
    assert loaded.mode in ("I;16", "I")
    # Whole mode at the image's own size and without normalisation returns the pixels themselves.
    out = processor(loaded, mode="whole", clip_resolution=24, size_divisibility=0, do_normalize=False)
    expected = torch.from_numpy(values.astype(np.float32) / np.float32(257.0))
    assert torch.equal(out["pixel_values"][0], expected.expand(3, -1, -1))
    assert out["pixel_values"].max() == 255.0 and (out["pixel_values"] < 1.0).any()
    assert 0.4 < (out["pixel_values"] < 127.5).float().mean() < 0.6


@pytest.mark.parametrize(
    "images, error, match",
    [
        ([], ValueError, r"No image given \(images=\[\]\)"),
        ([[], []], ValueError, r"No image given \(images=\[\[\], \[\]\]\)"),
        ((), ValueError, r"images=\(\)"),
        (5, TypeError, r"Image 0 of the batch: Unsupported image type int \(5\)"),
        (None, TypeError, r"Unsupported image type NoneType \(None\)"),
        ("cat.png", TypeError, r"Unsupported image type str \('cat.png'\)"),
        (np.zeros((0, 4, 3), np.uint8), ValueError, r"Empty image of shape \(0, 4, 3\)"),
        (np.zeros((4, 4, 3), np.complex64), TypeError, "dtype complex64"),
    ],
)
def test_empty_and_wrong_inputs_name_the_value(processor, images, error, match) -> None:
    with pytest.raises(error, match=match):
        processor(images)


# ------------------------------------------------------------------------------------------------- settings (kwargs)
def test_rescale_normalize_and_data_format(processor) -> None:
    image = _random_uint8(21, 34)
    raw = torch.from_numpy(image).permute(2, 0, 1).float()
    plain = processor(image, mode="whole", do_normalize=False, size_divisibility=0)["pixel_values"][0]
    expected = F.interpolate(raw[None], size=(384, 384), mode="bilinear", align_corners=False)[0]
    assert torch.equal(plain, expected)
    # do_rescale multiplies just before normalising: with mean/std on the 0-1 scale it gives the default views.
    rescaled = processor(
        image,
        do_rescale=True,
        rescale_factor=1 / 255,
        image_mean=[m / 255 for m in ipmod.CLIP_IMAGE_MEAN],
        image_std=[s / 255 for s in ipmod.CLIP_IMAGE_STD],
    )["pixel_values"]
    assert (rescaled - processor(image)["pixel_values"]).abs().max().item() <= 1e-4
    assert processor(image, do_rescale=True, rescale_factor=-1.0)["pixel_values"].max() < 0
    channels_last = processor(image, data_format="channels_last")["pixel_values"]
    assert channels_last.shape == (1, 5, 384, 384, 3)
    assert torch.equal(channels_last.movedim(-1, -3), processor(image)["pixel_values"])


def test_do_convert_rgb_false_keeps_the_channels(processor) -> None:
    rgba = np.concatenate([_random_uint8(19, 23), np.full((19, 23, 1), 7, np.uint8)], axis=-1)
    kept = processor(rgba, do_convert_rgb=False, image_mean=[0.0] * 4, image_std=[1.0] * 4, mode="whole")
    assert kept["pixel_values"].shape == (1, 4, 384, 384)
    with pytest.raises(ValueError, match="4 channels but image_mean has 3 values"):
        processor(rgba, do_convert_rgb=False)
    gray = processor(rgba[..., 0], do_convert_rgb=False, image_mean=0.0, image_std=1.0, mode="whole")
    assert gray["pixel_values"].shape == (1, 1, 384, 384)


@pytest.mark.parametrize("key", ["size", "crop_size", "do_resize", "resample", "do_pad", "do_center_crop"])
def test_unsupported_transformers_kwargs_raise(processor, key: str) -> None:
    value = {"size": {"height": 10, "width": 10}, "crop_size": 10, "resample": 2}.get(key, True)
    with pytest.raises(ValueError, match=f"does not support \\['{key}'\\]"):
        processor(_random_uint8(8, 8), **{key: value})
    with pytest.raises(ValueError, match=f"does not support \\['{key}'\\]"):
        CATSegImageProcessor(**{key: value})


def test_unknown_kwargs_raise(processor) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument.*clip_resolutoin"):
        processor(_random_uint8(8, 8), clip_resolutoin=32)
    # A saved configuration may carry extra keys: they load (as attributes, with a warning) but change nothing.
    loaded = CATSegImageProcessor(sliding_strid=128)
    assert loaded.sliding_stride == 256 and loaded.sliding_strid == 128
    with pytest.raises(ValueError, match="return_tensors"):
        processor(_random_uint8(8, 8), return_tensors="tf")


def test_explicit_none_flags_survive_save_and_load(tmp_path: Path) -> None:
    image_processor = CATSegImageProcessor(do_normalize=None)
    assert image_processor.to_dict()["do_normalize"] is None
    image_processor.save_pretrained(tmp_path)
    assert CATSegImageProcessor.from_pretrained(tmp_path).do_normalize is None
    # None for CAT-Seg's own settings asks for the default.
    assert CATSegImageProcessor(clip_resolution=None, image_mean=None).clip_resolution == 384


def test_instances_do_not_share_mutable_settings() -> None:
    first, second = CATSegImageProcessor(), CATSegImageProcessor()
    first.image_mean[0] = -1.0
    assert second.image_mean == ipmod.CLIP_IMAGE_MEAN and CATSegImageProcessor.image_mean[0] != -1.0


# ------------------------------------------------------------------------------------------------- post-processing
def _fake_logits(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator) * 3


def test_post_processing_batches_and_defaults(processor) -> None:
    images = [_random_uint8(30, 40), _random_uint8(50, 20)]
    for mode, logits, default_size in (
        ("sliding", _fake_logits((2, 5, 7, 24, 24)), (640, 640)),
        ("whole", _fake_logits((2, 7, 24, 24)), (24, 24)),
    ):
        assert processor(images, mode=mode)["pixel_values"].shape[:-3] == logits.shape[:-3]
        outputs = SemanticSegmenterOutput(logits=logits)
        maps = processor.post_process_semantic_segmentation(outputs)
        assert [tuple(m.shape) for m in maps] == [default_size] * 2
        maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(30, 40), (50, 20)])
        assert [tuple(m.shape) for m in maps] == [(30, 40), (50, 20)]
        assert all(m.dtype == torch.int64 and m.min() >= 0 and m.max() < 7 for m in maps)
        resized = processor.post_process_semantic_segmentation(outputs, target_sizes=torch.tensor([[8, 9], [10, 11]]))
        assert [tuple(m.shape) for m in resized] == [(8, 9), (10, 11)]
        scored = processor.post_process_semantic_segmentation(
            outputs, target_sizes=[(30, 40), (50, 20)], return_segmentation_scores=True
        )
        assert scored[1].segmentation_scores.shape == (7, 50, 20)
        assert scored[1].segmentation_scores.dtype == torch.float32
        assert torch.equal(scored[1].segmentation, maps[1])
        # Each image alone gives the same map as in the batch.
        single = processor.post_process_semantic_segmentation(logits[1:], target_sizes=[(50, 20)])
        assert torch.equal(single[0], maps[1])


def test_whole_mode_crops_to_the_image_size_first(processor) -> None:
    # The official quirk: an image smaller than the logits map keeps only its own corner of the map.
    logits = _fake_logits((1, 4, 24, 24), seed=2)
    cropped = processor.post_process_semantic_segmentation(
        logits, target_sizes=[(16, 20)], image_sizes=[(10, 12)], return_segmentation_scores=True
    )[0]
    expected = F.interpolate(logits[:, :, :10, :12].sigmoid(), size=(16, 20), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(cropped.segmentation_scores, expected, rtol=0, atol=1e-6)
    assert torch.equal(cropped.segmentation, cropped.segmentation_scores.argmax(0))
    uncropped = processor.post_process_semantic_segmentation(logits, target_sizes=[(16, 20)])[0]
    assert not torch.equal(uncropped, cropped.segmentation)


def test_post_processing_accepts_objects_dicts_and_tensors(processor) -> None:
    logits = _fake_logits((3, 4, 24, 24))
    maps = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits))
    assert len(maps) == 3 and maps[0].shape == (24, 24)
    assert torch.equal(maps[0], logits[0].argmax(0))
    assert torch.equal(processor.post_process_semantic_segmentation({"logits": logits})[2], maps[2])
    assert processor.post_process_semantic_segmentation(logits, target_sizes=[(5, 6)] * 3)[2].shape == (5, 6)


def test_post_processing_errors(processor) -> None:
    logits = _fake_logits((3, 4, 24, 24))
    with pytest.raises(ValueError, match="target_sizes has 1 entries but the logits hold 3 images"):
        processor.post_process_semantic_segmentation(logits, target_sizes=[(5, 6)])
    with pytest.raises(ValueError, match="image_sizes has 2 entries"):
        processor.post_process_semantic_segmentation(logits, image_sizes=[(5, 6)] * 2)
    with pytest.raises(ValueError, match="one row per image"):
        processor.post_process_semantic_segmentation(logits[:1], target_sizes=(5, 6))
    with pytest.raises(ValueError, match="needs the model's `logits`"):
        processor.post_process_semantic_segmentation({"pixel_values": logits})
    with pytest.raises(ValueError, match="sliding_canvas_size=640, sliding_tile_size=384, sliding_stride=256"):
        processor.post_process_semantic_segmentation(_fake_logits((1, 3, 4, 24, 24)))
    with pytest.raises(ValueError, match="got shape \\(4, 24, 24\\)"):
        processor.post_process_semantic_segmentation(logits[0])
    for bad in (float("nan"), float("inf")):
        broken = logits.clone()
        broken[1, 2, 3, 4] = bad
        with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\) of 6912 \(in image\(s\) \[1\]"):
            processor.post_process_semantic_segmentation(broken)


@pytest.mark.parametrize("name", ["target_sizes", "image_sizes"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([(5, 6)], r"has 1 entries but the logits hold 3 images; pass one \(height, width\) per image"),
        ([(5, 6, 7)] * 3, r"must hold 2 integers per image \(one row per image, e.g. \[\[480, 640\]\]"),
        (5, r"must hold 2 integers per image"),
        ([("a", "b")] * 3, r"must hold 2 integers per image"),
        ([(5, 0)] * 3, r"must hold positive \(height, width\) pairs, got \[\(5, 0\)"),
        (torch.tensor([[5, -1]] * 3), r"must hold positive \(height, width\) pairs"),
    ],
)
def test_post_processing_size_errors_name_the_argument(processor, name, value, message) -> None:
    """`target_sizes` and `image_sizes` are checked alike: the message names the argument, the problem and the fix."""
    with pytest.raises(ValueError, match=f"^{name} {message}"):
        processor.post_process_semantic_segmentation(_fake_logits((3, 4, 24, 24)), **{name: value})


@pytest.mark.parametrize("shape", [(2, 4, 24, 24), (2, 5, 4, 24, 24)])
def test_all_nan_logits_give_no_label_map(processor, shape) -> None:
    # Never a confident-looking map of class 0.
    logits = torch.full(shape, float("nan"))
    with pytest.raises(ValueError, match=rf"{logits.numel()} NaN or infinite value\(s\).*\[0, 1\]"):
        processor.post_process_semantic_segmentation(logits, return_segmentation_scores=True)


def test_wrong_number_of_views_names_both(processor) -> None:
    with pytest.raises(ValueError, match="hold 4 views per image.*sliding_stride=256\\) has 5"):
        processor.post_process_semantic_segmentation(_fake_logits((1, 4, 3, 24, 24)))
    small = CATSegImageProcessor(sliding_canvas_size=96, sliding_tile_size=64, sliding_stride=16)
    with pytest.raises(ValueError, match="hold 5 views per image.*sliding_stride=16\\) has 10"):
        small.post_process_semantic_segmentation(_fake_logits((1, 5, 3, 24, 24)))


def test_return_probabilities_is_deprecated(processor) -> None:
    logits = _fake_logits((2, 1 + 4, 6, 24, 24))
    with pytest.warns(FutureWarning, match="return_segmentation_scores"):
        old = processor.post_process_semantic_segmentation(logits, return_probabilities=True)
    new = processor.post_process_semantic_segmentation(logits, return_segmentation_scores=True)
    assert set(old[0].keys()) == {"segmentation", "probabilities"}
    assert torch.equal(old[0]["probabilities"], new[0].segmentation_scores)
    assert torch.equal(old[1]["segmentation"], new[1].segmentation)
    with pytest.warns(FutureWarning):
        labels = processor.post_process_semantic_segmentation(logits, return_probabilities=False)
    assert torch.equal(labels[1], new[1].segmentation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(ValueError, match="only `return_segmentation_scores"):
            processor.post_process_semantic_segmentation(
                logits, return_probabilities=True, return_segmentation_scores=True
            )


def test_post_processing_chunking_is_exact(monkeypatch) -> None:
    # 300 classes; the first 10 dropped by top-k (-100) in the global view, as the model reports them. A small valid
    # sliding window keeps the test fast: the arithmetic does not depend on the sizes.
    small = CATSegImageProcessor(sliding_canvas_size=96, sliding_tile_size=64, sliding_stride=32)
    sliding = _fake_logits((1, 5, 300, 24, 24), seed=3)
    sliding[0, 4, :10] = -100.0
    whole = _fake_logits((1, 300, 24, 24), seed=4)
    cases = ((sliding, {"target_sizes": [(37, 53)]}), (whole, {"target_sizes": [(20, 30)], "image_sizes": [(20, 30)]}))
    full = [small.post_process_semantic_segmentation(x, return_segmentation_scores=True, **kw)[0] for x, kw in cases]
    # Smallest chunks: 16 classes, so 300 classes run as 18 chunks of 16 and one of 12.
    monkeypatch.setattr(ppmod, "_POSTPROCESS_CHUNK_ELEMENTS", 1)
    for (logits, kwargs), reference in zip(cases, full):
        chunked = small.post_process_semantic_segmentation(logits, return_segmentation_scores=True, **kwargs)[0]
        labels = small.post_process_semantic_segmentation(logits, **kwargs)[0]
        assert torch.equal(reference.segmentation_scores, chunked.segmentation_scores)
        assert torch.equal(reference.segmentation, labels)
        assert torch.equal(reference.segmentation_scores.argmax(0), labels)


def _reference_sliding_probabilities(logits: torch.Tensor, layout, target) -> torch.Tensor:
    """The official sliding post-processing written plainly: all classes at once, F.fold for the tiles."""
    canvas_h, canvas_w, tile, stride = layout
    probs = F.interpolate(logits, size=(tile, tile), mode="bilinear", align_corners=False).sigmoid()
    counts = F.fold(
        F.unfold(torch.ones(1, canvas_h, canvas_w), kernel_size=tile, stride=stride),
        output_size=(canvas_h, canvas_w),
        kernel_size=tile,
        stride=stride,
    )
    tiles = F.fold(probs[:-1].flatten(1).T, output_size=(canvas_h, canvas_w), kernel_size=tile, stride=stride)
    global_probs = F.interpolate(probs[-1:], size=(canvas_h, canvas_w), mode="bilinear", align_corners=False)
    merged = (tiles / counts + global_probs) / 2
    return F.interpolate(merged, size=target, mode="bilinear", align_corners=False)[0]


def test_constant_classes_share_one_map_exactly() -> None:
    # Classes a top-k model dropped have one constant logit everywhere: post-processing computes their map once.
    # Class 12 varies (one pixel differs) but elsewhere ties with the constant classes 10 and 30: ties go to the
    # lowest id, whichever path computed the tied values.
    small = CATSegImageProcessor(sliding_canvas_size=96, sliding_tile_size=64, sliding_stride=32)
    layout = [96, 96, 64, 32]
    logits = _fake_logits((5, 40, 24, 24), seed=5) - 8.0
    logits[:, [3, 20, 21, 22, 23, 24, 25]] = -100.0
    logits[:, [10, 30]] = 0.0
    logits[:, 12] = 0.0
    logits[0, 12, 0, 0] = 4.0
    kwargs = {"target_sizes": [(50, 70)]}
    result = small.post_process_semantic_segmentation(logits[None], return_segmentation_scores=True, **kwargs)[0]
    labels = small.post_process_semantic_segmentation(logits[None], **kwargs)[0]
    reference = _reference_sliding_probabilities(logits, layout, (50, 70))
    assert (result.segmentation_scores - reference).abs().max().item() <= 1e-6
    assert torch.equal(result.segmentation_scores[20], result.segmentation_scores[3])
    assert torch.equal(labels, result.segmentation_scores.argmax(0))
    assert torch.equal(labels, result.segmentation)
    assert set(labels.unique().tolist()) == {10, 12}
    assert (labels == 10).float().mean().item() > 0.5

    # Dropped classes win where every other class is lower still, resolved the same way.
    low = torch.full_like(logits, -30.0)
    low[:, 7] = -20.0
    low[:, 2] = -20.0
    low[1, 9] = -15.0
    low_result = small.post_process_semantic_segmentation(low[None], return_segmentation_scores=True, **kwargs)[0]
    low_labels = small.post_process_semantic_segmentation(low[None], **kwargs)[0]
    assert torch.equal(low_labels, low_result.segmentation_scores.argmax(0))
    assert set(low_labels.unique().tolist()) <= {2, 9} and (low_labels == 2).any()


# ------------------------------------------------------------------------------------------------------ save / load
def test_save_and_load(tmp_path: Path) -> None:
    processor = CATSegImageProcessor(clip_resolution=336, mode="whole", sliding_stride=128)
    processor.save_pretrained(tmp_path)
    for loaded in (CATSegImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, CATSegImageProcessor)
        for key in ("clip_resolution", "mode", "sliding_stride", "sliding_canvas_size", "image_mean", "image_std"):
            assert getattr(loaded, key) == getattr(processor, key), key
    overridden = CATSegImageProcessor.from_pretrained(tmp_path, mode="sliding")
    assert overridden.mode == "sliding"
    image = _random_uint8(20, 30)
    assert torch.equal(
        AutoImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"],
        processor(image, return_tensors="pt")["pixel_values"],
    )


# ----------------------------------------------------------------------------------------- padded (training) batches
def test_padded_batch_is_whole_mode_padded_together() -> None:
    """`preprocess_padded_batch` (the training collator's views) is whole mode with the batch padded to its largest
    size: one image gives exactly `preprocess(mode="whole")`, several the official normalise -> pad -> resize."""
    processor = CATSegImageProcessor(clip_resolution=48, size_divisibility=16)
    images = [_random_uint8(30, 45, seed=1), _random_uint8(20, 64, seed=2)]
    single = processor.preprocess_padded_batch(images[:1])
    assert single["padded_size"] == (32, 48)
    whole = processor(images[0], mode="whole", return_tensors="pt")["pixel_values"]
    assert torch.equal(single["pixel_values"], whole)

    batch = processor.preprocess_padded_batch(images)
    assert batch["padded_size"] == (32, 64) and batch["pixel_values"].shape == (2, 3, 48, 48)
    mean = torch.tensor(ipmod.CLIP_IMAGE_MEAN).view(-1, 1, 1)
    std = torch.tensor(ipmod.CLIP_IMAGE_STD).view(-1, 1, 1)
    padded = torch.zeros(2, 3, 32, 64)
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        padded[i, :, :h, :w] = (torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std
    expected = F.interpolate(padded, size=(48, 48), mode="bilinear", align_corners=False)
    assert torch.equal(batch["pixel_values"], expected)
    # A (height, width) resolution, and per-call settings.
    assert processor.preprocess_padded_batch(images, clip_resolution=(32, 64), size_divisibility=0)[
        "pixel_values"
    ].shape == (2, 3, 32, 64)
    with pytest.raises(ValueError, match="Cannot make a batch of no images"):
        processor.preprocess_padded_batch([])
    with pytest.raises(ValueError, match="Image 1 of the batch: it has 1 channels"):
        processor.preprocess_padded_batch([images[0], images[1][..., 0]], do_convert_rgb=False)
