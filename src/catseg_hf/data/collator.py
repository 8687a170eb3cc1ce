"""Turn transformed examples into CAT-Seg training batches (official pre-processing order).

Official CAT-Seg (``CATSeg.forward``) prepares the CLIP input of a batch as follows:

1. each image (float, 0-255 scale, ``(3, H, W)``) is normalised with the CLIP mean/std
   *on the 0-255 scale*;
2. the normalised images are zero-padded at the bottom/right to the batch's largest size,
   rounded up to a multiple of ``size_divisibility`` (detectron2 ``ImageList.from_tensors``)
   -- so padding is 0 *after* normalisation, i.e. the mean colour;
3. the padded batch is bilinearly resized (``align_corners=False``) to the CLIP resolution,
   e.g. 384x384, without keeping the aspect ratio.

The training targets stay at the padded resolution (padded with the ignore index); the model
upsamples its logits to that size for the loss.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import to_label_array, to_uint8_rgb

__all__ = ["CLIP_PIXEL_MEAN", "CLIP_PIXEL_STD", "CATSegTrainingCollator", "pad_and_resize_images"]

# OpenAI CLIP normalisation constants on the 0-255 scale (CAT-Seg's MODEL.CLIP_PIXEL_MEAN/STD).
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.3231630)


def _image_to_chw_float(image: Any) -> torch.Tensor:
    """PIL / uint8 HWC numpy / (3, H, W) tensor on the 0-255 scale -> float32 (3, H, W)."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"Tensor images must be (3, H, W) on the 0-255 scale, got shape {tuple(image.shape)}."
            )
        return image.to(torch.float32)
    array = to_uint8_rgb(image)
    return torch.from_numpy(array).permute(2, 0, 1).to(torch.float32)


def _label_to_tensor(label: Any) -> torch.Tensor:
    if isinstance(label, torch.Tensor):
        if label.ndim != 2:
            raise ValueError(f"Label tensors must be (H, W), got shape {tuple(label.shape)}.")
        return label.to(torch.int64)
    return torch.from_numpy(to_label_array(label).astype(np.int64))


def _padded_size(sizes: Sequence[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    max_h = max(h for h, _ in sizes)
    max_w = max(w for _, w in sizes)
    if size_divisibility > 1:
        # Round up to a multiple, as detectron2's ImageList.from_tensors does.
        max_h = (max_h + size_divisibility - 1) // size_divisibility * size_divisibility
        max_w = (max_w + size_divisibility - 1) // size_divisibility * size_divisibility
    return max_h, max_w


def pad_and_resize_images(
    images: Sequence[torch.Tensor],
    image_mean: Sequence[float] = CLIP_PIXEL_MEAN,
    image_std: Sequence[float] = CLIP_PIXEL_STD,
    clip_resolution: int | Sequence[int] = 384,
    size_divisibility: int = 32,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalise, zero-pad and resize a list of float ``(3, H, W)`` 0-255 images (official order).

    Returns:
        ``(pixel_values, padded_size)``: float32 ``(B, 3, R_h, R_w)`` and the ``(H, W)`` the
        batch was padded to before resizing.
    """
    if len(images) == 0:
        raise ValueError("Cannot collate an empty batch.")
    mean = torch.tensor(image_mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32).view(-1, 1, 1)
    padded_h, padded_w = _padded_size([tuple(img.shape[-2:]) for img in images], size_divisibility)
    batch = torch.zeros((len(images), 3, padded_h, padded_w), dtype=torch.float32)
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        batch[i, :, :h, :w] = (img - mean) / std
    if isinstance(clip_resolution, int):
        resolution = (clip_resolution, clip_resolution)
    else:
        resolution = tuple(int(v) for v in clip_resolution)
    pixel_values = F.interpolate(batch, size=resolution, mode="bilinear", align_corners=False)
    return pixel_values, (padded_h, padded_w)


class CATSegTrainingCollator:
    """Collate ``{"image", "label"}`` examples into CAT-Seg model inputs.

    Args:
        class_token_inputs: tokenised class prompts produced once by the processor, e.g.
            ``{"input_ids": LongTensor (T, P, 77), "attention_mask": LongTensor (T, P, 77)}``;
            every batch gets these tensors unchanged. ``None`` adds no text inputs.
        image_mean, image_std: normalisation on the 0-255 scale (CLIP's, by default).
        clip_resolution: size the padded batch is resized to (int or ``(height, width)``).
        size_divisibility: the padded size is rounded up to a multiple of this (the model's
            ``MASK_FORMER.SIZE_DIVISIBILITY``, 32 in CAT-Seg).
        ignore_index: label value for padded pixels.

    Each example needs ``image`` (PIL, uint8 ``(H, W, 3)`` numpy, or a ``(3, H, W)`` tensor on
    the 0-255 scale) and ``label`` (``(H, W)`` class ids). Returns a dict with ``pixel_values``
    float32 ``(B, 3, R, R)``, ``labels`` int64 ``(B, H_pad, W_pad)`` and the class-token tensors.

    Note: with ``transformers.Trainer`` set ``remove_unused_columns=False`` so that the
    ``image``/``label`` columns reach this collator.
    """

    def __init__(
        self,
        class_token_inputs: Mapping[str, torch.Tensor] | None = None,
        image_mean: Sequence[float] = CLIP_PIXEL_MEAN,
        image_std: Sequence[float] = CLIP_PIXEL_STD,
        clip_resolution: int | Sequence[int] = 384,
        size_divisibility: int = 32,
        ignore_index: int = 255,
    ):
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError("image_mean and image_std need one value per RGB channel (3 values each).")
        if any(s <= 0 for s in image_std):
            raise ValueError(f"image_std values must be positive, got {tuple(image_std)}.")
        self.class_token_inputs: dict[str, torch.Tensor] = {}
        if class_token_inputs is not None:
            if not hasattr(class_token_inputs, "items"):
                raise TypeError(
                    "class_token_inputs must be a mapping such as {'input_ids': ..., 'attention_mask': ...} "
                    f"(the processor's tokenised class prompts), got {type(class_token_inputs).__name__}."
                )
            for key, value in class_token_inputs.items():
                if not isinstance(value, torch.Tensor):
                    raise TypeError(
                        f"class_token_inputs[{key!r}] must be a torch.Tensor, got {type(value).__name__}; "
                        "tokenise with return_tensors='pt'."
                    )
                self.class_token_inputs[key] = value
            if self.class_token_inputs and "input_ids" not in self.class_token_inputs:
                raise ValueError(
                    f"class_token_inputs has keys {sorted(self.class_token_inputs)} but no 'input_ids'."
                )
        for key in ("pixel_values", "labels"):
            if key in self.class_token_inputs:
                raise ValueError(f"class_token_inputs must not contain {key!r}; the collator produces it.")
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.clip_resolution = clip_resolution
        self.size_divisibility = int(size_divisibility)
        self.ignore_index = int(ignore_index)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(examples) == 0:
            raise ValueError("Cannot collate an empty batch.")
        images, labels = [], []
        for index, example in enumerate(examples):
            if "image" not in example or "label" not in example:
                raise KeyError(
                    f"Example {index} has keys {sorted(example)}; it needs 'image' and 'label'. With "
                    "transformers.Trainer, set remove_unused_columns=False so these columns are kept."
                )
            image = _image_to_chw_float(example["image"])
            label = _label_to_tensor(example["label"])
            if tuple(image.shape[-2:]) != tuple(label.shape):
                raise ValueError(
                    f"Example {index}: image size {tuple(image.shape[-2:])} and label size {tuple(label.shape)} "
                    "differ; transform image and label together (e.g. with TrainTransform)."
                )
            self._check_label_ids(label, index)
            images.append(image)
            labels.append(label)

        pixel_values, (padded_h, padded_w) = pad_and_resize_images(
            images, self.image_mean, self.image_std, self.clip_resolution, self.size_divisibility
        )
        label_batch = torch.full((len(labels), padded_h, padded_w), self.ignore_index, dtype=torch.int64)
        for i, label in enumerate(labels):
            h, w = label.shape
            label_batch[i, :h, :w] = label

        batch = {"pixel_values": pixel_values, "labels": label_batch}
        batch.update(self.class_token_inputs)
        return batch

    def _check_label_ids(self, label: torch.Tensor, index: int) -> None:
        # The loss would count an id outside the vocabulary as background (the reference's one-hot fails on it):
        # such labels are a data error, most often raw ids that needed `reduce_labels`.
        input_ids = self.class_token_inputs.get("input_ids")
        if input_ids is None:
            return
        num_classes = input_ids.shape[0]
        outside = ((label < 0) | (label >= num_classes)) & (label != self.ignore_index)
        if bool(outside.any()):
            ids = torch.unique(label[outside]).tolist()
            shown = ", ".join(str(i) for i in ids[:8]) + (", ..." if len(ids) > 8 else "")
            raise ValueError(
                f"Example {index}: label id(s) {shown} on {int(outside.sum())} pixel(s) are not among the "
                f"{num_classes} training classes (ids 0..{num_classes - 1}) nor the ignore id {self.ignore_index}. "
                "Give labels in the vocabulary's ids (raw ids 1..N with 0 for 'other' need reduce_labels, e.g. "
                "--reduce_labels true)."
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(class_token_keys={sorted(self.class_token_inputs)}, "
            f"clip_resolution={self.clip_resolution!r}, size_divisibility={self.size_divisibility}, "
            f"ignore_index={self.ignore_index})"
        )
