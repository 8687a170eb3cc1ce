"""Post-processing for CAT-Seg: logits to label maps (and scores), and the sliding window's geometry.

The sliding window's checks and view count are shared with preprocessing (`image_processing_catseg.py`).

Whole mode: sigmoid, (crop to the input size,) resize to the target size. Sliding mode: per-tile sigmoid, tiles folded
onto the canvas and averaged with the global view, resize to the target size. The label is the arg-max over classes.

This file must only import torch, numpy and transformers: it is copied into saved model folders next to
`image_processing_catseg.py` (which imports it relatively), so that they load with `trust_remote_code=True` where
`catseg_hf` is not installed.
"""

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput


# Target for the float32 elements of the intermediates of one class chunk in post-processing (about 32 MB): bounded
# memory, and temporaries small enough for glibc to serve from reused heap memory instead of fresh (page-faulting)
# mappings, which made the sliding post-processing of 150 classes 1.4x faster than chunks of 64 classes.
_POSTPROCESS_CHUNK_ELEMENTS = 8 * 1024 * 1024
# Chunks hold a multiple of this many classes, so that every class keeps its position within a vector lane of
# PyTorch's CPU resize kernels (8 or 16 float32 lanes) as in one call over all classes; measured: chunked results
# are bit-identical to unchunked ones (tests/test_image_processing.py).
_POSTPROCESS_CHUNK_ALIGN = 16


# ============================================================================================ the sliding window
def check_sliding_window(canvas: int, tile: int, stride: int) -> None:
    """Raises a `ValueError` unless tiles of side `tile` at stride `stride` cover a `canvas` square exactly."""
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


def num_views(layout: Sequence[int]) -> int:
    """Views per image: 1 in whole mode (all-zero layout), tiles + 1 global view in sliding mode."""
    if not any(layout):
        return 1
    canvas_h, canvas_w, tile, stride = layout
    return ((canvas_h - tile) // stride + 1) * ((canvas_w - tile) // stride + 1) + 1


# ============================================================================================ post-processing
def post_process_semantic_segmentation(
    outputs: Any,
    sliding_window: tuple[int, int, int],
    target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
    return_segmentation_scores: bool = False,
    image_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
    return_probabilities: bool | None = None,
) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
    r"""
    The post-processing of [`CATSegImageProcessor.post_process_semantic_segmentation`], which documents the
    arguments, the return values and the computation; the processor passes its own sliding window.

    Args:
        sliding_window (`tuple[int, int, int]`):
            `(canvas, tile, stride)` of the sliding window the sliding-mode inputs were made with (the processor's
            `sliding_canvas_size`, `sliding_tile_size`, `sliding_stride`).
    """
    if return_probabilities is not None:
        warnings.warn(
            "`return_probabilities` is deprecated and will be removed in the next release: use "
            "`return_segmentation_scores=True`, whose `segmentation_scores` are the same probabilities.",
            FutureWarning,
            stacklevel=3,
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
        canvas, tile, stride = sliding_window
        check_sliding_window(canvas, tile, stride)
        layout = (canvas, canvas, tile, stride)
        if logits.shape[1] != num_views(layout):
            raise ValueError(
                f"The sliding-mode logits hold {logits.shape[1]} views per image, but this processor's sliding "
                f"window (sliding_canvas_size={canvas}, sliding_tile_size={tile}, sliding_stride={stride}) has "
                f"{num_views(layout)}; post-process with the settings the inputs were made with."
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
    target_sizes = _sizes_per_image(target_sizes, "target_sizes", num_images)
    if target_sizes is None:
        default = layout[:2] if any(layout) else tuple(logits.shape[-2:])
        target_sizes = [tuple(default)] * num_images
    image_sizes = _sizes_per_image(image_sizes, "image_sizes", num_images)

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
def _get_field(outputs: Any, name: str) -> Any:
    """`outputs.name`, `outputs[name]` or, for a bare tensor, the tensor itself as the logits."""
    if isinstance(outputs, torch.Tensor):
        return outputs if name == "logits" else None
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def _sizes_per_image(value: Any, name: str, num_images: int) -> list[tuple[int, int]] | None:
    """`value` (`target_sizes` or `image_sizes`) as one positive `(height, width)` per image; `None` stays `None`.

    Raises a `ValueError` naming the argument, what it holds and what to pass instead when it is not `num_images`
    rows of two positive integers."""
    if value is None:
        return None
    rows = value.tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else value
    try:
        sizes = [tuple(int(v) for v in row) for row in rows]
    except (TypeError, ValueError):
        sizes = None
    if sizes is None or any(len(size) != 2 for size in sizes):
        raise ValueError(
            f"{name} must hold 2 integers per image (one row per image, e.g. [[480, 640]] for one image's "
            f"(height, width)), got {value!r}."
        )
    if any(min(size) <= 0 for size in sizes):
        raise ValueError(f"{name} must hold positive (height, width) pairs, got {sizes}.")
    if len(sizes) != num_images:
        raise ValueError(
            f"{name} has {len(sizes)} entries but the logits hold {num_images} images; pass one (height, width) per "
            "image."
        )
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
        num_tiles = num_views(layout) - 1
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


__all__ = ["check_sliding_window", "num_views", "post_process_semantic_segmentation"]
