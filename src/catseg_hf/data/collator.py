"""Turn transformed examples into CAT-Seg training batches: the image processor's whole-mode views, padded together.

Official CAT-Seg (`CATSeg.forward`) prepares the CLIP input of a training batch by normalising every image (0-255
scale, CLIP mean/std), zero-padding the batch bottom/right to its largest size rounded up to a multiple of
`size_divisibility` (detectron2 `ImageList.from_tensors`; so the padding is the mean colour) and bilinearly resizing
the padded batch to the CLIP resolution. That maths lives in one place,
[`~catseg_hf.CATSegImageProcessor.preprocess_padded_batch`]; this module adds the labels, padded with the ignore
index to the same size (the model upsamples its logits to it for the loss), and the tokenised class prompts.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..image_processing_catseg import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, CATSegImageProcessor
from .transforms import to_label_array, to_uint8_rgb

__all__ = ["CLIP_PIXEL_MEAN", "CLIP_PIXEL_STD", "CATSegTrainingCollator", "pad_and_resize_images"]

# Old names of the image processor's constants (CAT-Seg's MODEL.CLIP_PIXEL_MEAN/STD), kept for existing imports.
CLIP_PIXEL_MEAN = tuple(CLIP_IMAGE_MEAN)
CLIP_PIXEL_STD = tuple(CLIP_IMAGE_STD)


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


def pad_and_resize_images(
    images: Sequence[torch.Tensor],
    image_mean: Sequence[float] = CLIP_PIXEL_MEAN,
    image_std: Sequence[float] = CLIP_PIXEL_STD,
    clip_resolution: int | Sequence[int] | None = None,
    size_divisibility: int = 32,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalise, zero-pad and resize a list of float `(3, H, W)` 0-255 images (official order).

    A shortcut for [`~catseg_hf.CATSegImageProcessor.preprocess_padded_batch`] with these settings
    (`clip_resolution` defaults to the image processor's, 384).

    Returns:
        `(pixel_values, padded_size)`: float32 `(B, 3, R_h, R_w)` and the `(H, W)` the batch was padded to before
        resizing.
    """
    if len(images) == 0:
        raise ValueError("Cannot collate an empty batch.")
    processor = CATSegImageProcessor(
        image_mean=list(image_mean), image_std=list(image_std), size_divisibility=size_divisibility
    )
    batch = processor.preprocess_padded_batch(
        list(images), clip_resolution=clip_resolution, input_data_format="channels_first"
    )
    return batch["pixel_values"], batch["padded_size"]


class CATSegTrainingCollator:
    """Collate `{"image", "label"}` examples into CAT-Seg model inputs.

    Args:
        class_token_inputs (`Mapping[str, torch.Tensor]`, *optional*):
            Tokenised class prompts produced once by the processor, e.g.
            `{"input_ids": LongTensor (T, P, 77), "attention_mask": LongTensor (T, P, 77)}`;
            every batch gets these tensors unchanged. `None` adds no text inputs.
        image_processor (`CATSegImageProcessor`, *optional*):
            The [`~catseg_hf.CATSegImageProcessor`] whose whole-mode preprocessing makes the
            batch (normalisation, `size_divisibility`, `clip_resolution`); default: one with CAT-Seg's defaults.
            Use the processor the model is saved with (`processor.image_processor`).
        clip_resolution (`int | Sequence[int]`, *optional*):
            Size the padded batch is resized to (int or `(height, width)`); default: the image
            processor's.
        ignore_index (`int`, *optional*, defaults to `255`):
            Label value for padded pixels.
        image_processor_kwargs (`Any`):
            Per-batch overrides of the image processor's settings, e.g. `image_mean`,
            `image_std`, `size_divisibility`.

    Each example needs `image` (PIL, uint8 `(H, W, 3)` numpy, or a `(3, H, W)` tensor on
    the 0-255 scale) and `label` (`(H, W)` class ids). Returns a dict with `pixel_values`
    float32 `(B, 3, R, R)`, `labels` int64 `(B, H_pad, W_pad)` and the class-token tensors.

    Note: with `transformers.Trainer` set `remove_unused_columns=False` so that the
    `image`/`label` columns reach this collator.
    """

    def __init__(
        self,
        class_token_inputs: Mapping[str, torch.Tensor] | None = None,
        image_processor: CATSegImageProcessor | None = None,
        *,
        clip_resolution: int | Sequence[int] | None = None,
        ignore_index: int = 255,
        **image_processor_kwargs: Any,
    ):
        if image_processor is not None and not isinstance(image_processor, CATSegImageProcessor):
            raise TypeError(
                f"image_processor must be a CATSegImageProcessor (processor.image_processor), got "
                f"{type(image_processor).__name__}."
            )
        self.image_processor = image_processor if image_processor is not None else CATSegImageProcessor()
        # Checked now (a bad mean or std is a setup error, not one of the first batch).
        self.image_processor._resolve_settings(dict(image_processor_kwargs), f"{type(self).__name__}()")
        self.image_processor_kwargs = dict(image_processor_kwargs)
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
        self.clip_resolution = clip_resolution
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

        views = self.image_processor.preprocess_padded_batch(
            images, clip_resolution=self.clip_resolution, input_data_format="channels_first", **self.image_processor_kwargs
        )
        pixel_values, (padded_h, padded_w) = views["pixel_values"], views["padded_size"]
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
            f"image_processor={type(self.image_processor).__name__}, clip_resolution={self.clip_resolution!r}, "
            f"overrides={self.image_processor_kwargs!r}, ignore_index={self.ignore_index})"
        )
