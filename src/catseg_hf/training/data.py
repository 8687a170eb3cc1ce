"""Reproducible training augmentation, so that resuming from a checkpoint continues the exact same run.

A stateful random stream (one generator drawing for every image in turn) cannot be resumed: `Trainer` skips the
batches already seen without loading them, and the data loader fetches batches ahead of the step being trained. So
the official augmentation ([`catseg_hf.data.transforms.train_transform`]) is instead drawn from a generator
seeded with `(seed, epoch, example index)`: an example gets the same augmentation in the same epoch of any run,
whatever was loaded before it and in whichever process or data-loader worker, and a different one in every epoch.

The example index travels in an extra column ([`with_example_index`]); [`EpochSetterCallback`] tells the
transform which epoch `Trainer` is in (including after resuming).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from transformers import TrainerCallback

from ..data.transforms import TrainTransform, transform_training_batch

__all__ = ["EXAMPLE_INDEX_COLUMN", "EpochSetterCallback", "IndexedTrainTransform", "with_example_index"]

EXAMPLE_INDEX_COLUMN = "__example_index__"


def with_example_index(dataset, column: str = EXAMPLE_INDEX_COLUMN):
    """Adds the column `column` holding each example's position (0..n-1) to a `datasets.Dataset`.

    Any transform already installed with `with_transform`/`set_transform` is kept (its columns are extended).
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"with_example_index needs a map-style datasets.Dataset, got {type(dataset).__name__}; streaming datasets "
            "have no stable example positions (use catseg_hf.data.TrainTransform(seed=...) for them)."
        )
    if column in dataset.column_names:
        return dataset
    return dataset.add_column(column, np.arange(len(dataset), dtype=np.int64))


class IndexedTrainTransform:
    """Batch transform applying the official CAT-Seg training augmentation with per-example seeding.

    Use on a dataset prepared with [`with_example_index`] (e.g. through `catseg_hf.data.add_transform`); example
    `i` in epoch `e` is augmented with `numpy.random.default_rng([seed, e, i])`. Without the index column it falls
    back to a [`~catseg_hf.data.TrainTransform`] stream seeded with `seed` (reproducible from the start of a run,
    but not across a resume).

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Base seed (the training seed, typically).
        index_column (`str`, *optional*, defaults to `EXAMPLE_INDEX_COLUMN`):
            Name of the example-index column.
        **transform_kwargs (`Any`):
            Options of [`~catseg_hf.data.transforms.train_transform`] (crop_size, min_size,
            max_size, cat_max_ratio, ignore_index, flip_prob, color_aug, image_pad_value).

    Attributes:
        epoch (`int`):
            The current epoch, set by [`EpochSetterCallback`].
    """

    def __init__(self, seed: int = 0, index_column: str = EXAMPLE_INDEX_COLUMN, **transform_kwargs: Any):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        # Validates the options (and serves as the fallback for data without the index column).
        self._fallback = TrainTransform(seed=int(seed), **transform_kwargs)
        self.transform_kwargs = dict(self._fallback.kwargs)
        self.seed = int(seed)
        self.index_column = index_column
        self.epoch = 0

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[np.ndarray]]:
        if self.index_column not in batch:
            return self._fallback(batch)
        generators = (
            np.random.default_rng([self.seed, int(self.epoch), int(index)]) for index in batch[self.index_column]
        )
        return transform_training_batch(batch, generators, self.transform_kwargs, type(self).__name__)

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.transform_kwargs.items())
        return f"{type(self).__name__}(seed={self.seed}, epoch={self.epoch}, {options})"


class EpochSetterCallback(TrainerCallback):
    """Sets `transform.epoch` at the beginning of every epoch of `Trainer` (also of the epoch a run resumes in).

    `Trainer` calls `on_epoch_begin` before it creates the epoch's data-loader iterator, so workers (which copy the
    transform when the iterator starts, unless `dataloader_persistent_workers=True`) see the new epoch.
    """

    def __init__(self, *transforms: Any):
        self.transforms = [t for t in transforms if t is not None]

    def on_epoch_begin(self, args, state, control, **kwargs):
        # `state.epoch` is `epoch + steps / steps_per_epoch`: an integer at a fresh epoch, a fraction when resuming.
        epoch = int(math.floor((state.epoch or 0.0) + 1e-6))
        for transform in self.transforms:
            transform.epoch = epoch
        return control
