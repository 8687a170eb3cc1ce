"""Tests for the synthetic coloured-shapes benchmark (catseg_hf.data.synthetic)."""

import numpy as np
import pytest
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from catseg_hf.data.synthetic import (
    CLASS_NAMES,
    COLORS,
    HELDOUT_COMBOS,
    SEEN_COMBOS,
    SHAPES,
    combo_class_id,
    make_synthetic_dataset,
    render_scene,
    synthetic_class_names,
)

SEEN_IDS = {combo_class_id(c, s) for c, s in SEEN_COMBOS}
HELDOUT_IDS = {combo_class_id(c, s) for c, s in HELDOUT_COMBOS}


def _label_ids(dataset):
    ids = set()
    for example in dataset:
        ids |= set(np.unique(np.asarray(example["label"])).tolist())
    return ids


def _arrays(dataset):
    return [(np.asarray(ex["image"]), np.asarray(ex["label"])) for ex in dataset]


def test_class_names_and_combination_split():
    assert CLASS_NAMES[0] == "background"
    assert len(CLASS_NAMES) == 1 + len(COLORS) * len(SHAPES)
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert set(SEEN_COMBOS).isdisjoint(HELDOUT_COMBOS)
    assert len(SEEN_COMBOS) + len(HELDOUT_COMBOS) == len(COLORS) * len(SHAPES)
    # Every colour and every shape still appears among the seen combinations.
    assert {c for c, _ in SEEN_COMBOS} == set(COLORS)
    assert {s for _, s in SEEN_COMBOS} == set(SHAPES)
    assert synthetic_class_names() == CLASS_NAMES
    assert combo_class_id("red", "circle") == CLASS_NAMES.index("red circle")
    with pytest.raises(ValueError, match="Unknown combination"):
        combo_class_id("purple", "circle")


def test_columns_and_types():
    dataset, names = make_synthetic_dataset("train", 4, seed=0)
    assert isinstance(dataset, Dataset)
    assert dataset.column_names == ["image", "label"]
    assert isinstance(dataset.features["image"], ImageFeature)
    assert isinstance(dataset.features["label"], ImageFeature)
    assert names == CLASS_NAMES
    example = dataset[0]
    assert isinstance(example["image"], Image.Image) and example["image"].mode == "RGB"
    assert isinstance(example["label"], Image.Image) and example["label"].mode == "L"
    assert example["image"].size == example["label"].size == (128, 128)


def test_image_size_option():
    dataset, _ = make_synthetic_dataset("validation", 2, seed=1, image_size=(64, 96))
    assert dataset[0]["image"].size == (96, 64)  # PIL size is (width, height)
    assert np.asarray(dataset[0]["label"]).shape == (64, 96)


def test_determinism_by_seed():
    a, _ = make_synthetic_dataset("train", 5, seed=3)
    b, _ = make_synthetic_dataset("train", 5, seed=3)
    c, _ = make_synthetic_dataset("train", 5, seed=4)
    for (ia, la), (ib, lb) in zip(_arrays(a), _arrays(b)):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    assert any(not np.array_equal(ia, ic) for (ia, _), (ic, _) in zip(_arrays(a), _arrays(c)))
    # A smaller dataset is a prefix of a larger one with the same seed.
    small, _ = make_synthetic_dataset("train", 2, seed=3)
    for (i_small, _), (i_big, _) in zip(_arrays(small), _arrays(a)):
        np.testing.assert_array_equal(i_small, i_big)


def test_train_and_validation_differ():
    train, _ = make_synthetic_dataset("train", 3, seed=0)
    val, _ = make_synthetic_dataset("validation", 3, seed=0)
    assert all(not np.array_equal(t, v) for (t, _), (v, _) in zip(_arrays(train), _arrays(val)))


@pytest.mark.parametrize("split", ["train", "validation"])
def test_seen_splits_use_only_seen_combinations(split):
    dataset, names = make_synthetic_dataset(split, 60, seed=0)
    ids = _label_ids(dataset)
    assert ids <= SEEN_IDS | {0}
    assert ids.isdisjoint(HELDOUT_IDS)
    assert len(ids & SEEN_IDS) >= 10  # most seen combinations show up in 60 images


def test_heldout_split_uses_only_unseen_combinations():
    dataset, names = make_synthetic_dataset("heldout", 40, seed=0)
    ids = _label_ids(dataset)
    assert ids <= HELDOUT_IDS | {0}
    assert ids & HELDOUT_IDS == HELDOUT_IDS
    assert names == make_synthetic_dataset("train", 1, seed=0)[1]


def test_label_ids_are_valid_and_images_are_learnable():
    dataset, names = make_synthetic_dataset("train", 30, seed=5)
    for image, label in _arrays(dataset):
        assert label.dtype == np.uint8
        assert label.max() < len(names)  # no ignore pixels (255) in the synthetic data
        objects = np.unique(label[label > 0])
        assert 1 <= len(objects) <= 3
        # Shapes are 20-50% of the side: each object covers a reasonable area (the smallest
        # shape, a cross, fills 5/9 of its box; an occluding neighbour may hide up to 10%).
        for class_id in objects:
            assert (label == class_id).sum() >= 0.20**2 * label.size * 0.4
        # Colour dominates: object pixels are far more saturated than the background.
        img = image.astype(np.float32)
        saturation = img.max(axis=2) - img.min(axis=2)
        assert saturation[label > 0].mean() > 3 * saturation[label == 0].mean()


def test_render_scene_with_given_combos():
    image, label = render_scene(7, size=96, combos=["blue circle", ("green", "cross")], min_shapes=2, max_shapes=2)
    assert image.mode == "RGB" and image.size == (96, 96)
    assert label.mode == "L"
    ids = set(np.unique(np.asarray(label)).tolist()) - {0}
    assert ids and ids <= {combo_class_id("blue", "circle"), combo_class_id("green", "cross")}
    again_image, _ = render_scene(7, size=96, combos=["blue circle", ("green", "cross")], min_shapes=2, max_shapes=2)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(again_image))


def test_invalid_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="Unknown split"):
        make_synthetic_dataset("test", 1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        make_synthetic_dataset("train", 1, seed=-1)
    with pytest.raises(ValueError, match="colour shape"):
        render_scene(0, combos=["red"])
