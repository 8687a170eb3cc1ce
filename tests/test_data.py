"""Tests for the data layer: loading, label remapping, class names, transforms, collator."""

import colorsys
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset
from datasets import Image as ImageFeature
from PIL import Image

from catseg_hf.data import (
    CLIP_PIXEL_MEAN,
    CLIP_PIXEL_STD,
    OFFICIAL_LAYOUTS,
    CATSegTrainingCollator,
    EvalTransform,
    TrainTransform,
    add_transform,
    coco_stuff_raw_label_map,
    load_class_names,
    load_segmentation_dataset,
    make_synthetic_dataset,
    remap_labels,
    resize_shortest_edge,
    train_transform,
)
from catseg_hf.data.transforms import (
    color_aug_ssd,
    hsv_to_rgb_uint8,
    resize_label_nearest,
    rgb_to_hsv_uint8,
    sample_crop,
    shortest_edge_size,
)

# --------------------------------------------------------------------------- helpers


def _write_pair(image_dir, mask_dir, stem, size=(24, 32), seed=0, mask_ext=".png", image_ext=".png", max_id=20, dtype=np.uint8):
    """Write an image and a mask whose values are a deterministic function of the seed."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, max_id, size=(h, w)).astype(dtype)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    Image.fromarray(image).save(os.path.join(image_dir, stem + image_ext))
    Image.fromarray(mask).save(os.path.join(mask_dir, stem + mask_ext))
    return image, mask


@pytest.fixture()
def folder_pair(tmp_path):
    image_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    masks = {}
    for i in range(3):
        _, masks[f"img{i}"] = _write_pair(image_dir, mask_dir, f"img{i}", seed=i)
    return image_dir, mask_dir, masks


def _label(example):
    return np.asarray(example["label"])


# --------------------------------------------------------------------------- loading


def test_folder_pair_is_lazy_and_standardised(folder_pair):
    image_dir, mask_dir, masks = folder_pair
    dataset = load_segmentation_dataset((image_dir, mask_dir))
    assert isinstance(dataset, Dataset)
    assert dataset.column_names == ["image", "label"]
    assert isinstance(dataset.features["image"], ImageFeature)
    # Lazy: the Arrow table holds file paths, no encoded or decoded pixel data.
    stored = dataset.data.column("image").to_pylist()
    assert all(item["bytes"] is None and os.path.isabs(item["path"]) for item in stored)
    assert dataset.data.column("label").to_pylist()[0]["bytes"] is None
    # Sorted by stem and decoded on access.
    example = dataset[1]
    assert example["image"].mode == "RGB"
    np.testing.assert_array_equal(_label(example), masks["img1"])
    # Keyword form works too.
    same = load_segmentation_dataset(image_dir=image_dir, mask_dir=mask_dir)
    assert len(same) == 3


def test_folder_pair_unmatched_stems(folder_pair):
    image_dir, mask_dir, _ = folder_pair
    Image.new("RGB", (4, 4)).save(image_dir / "lonely_image.jpg")
    Image.new("L", (4, 4)).save(mask_dir / "lonely_mask.png")
    with pytest.raises(ValueError) as info:
        load_segmentation_dataset((image_dir, mask_dir))
    message = str(info.value)
    assert "lonely_image" in message and "lonely_mask" in message and "on_unmatched" in message
    skipped = load_segmentation_dataset((image_dir, mask_dir), on_unmatched="skip")
    assert len(skipped) == 3


def test_folder_pair_streaming(folder_pair):
    image_dir, mask_dir, masks = folder_pair
    stream = load_segmentation_dataset((image_dir, mask_dir), streaming=True)
    assert isinstance(stream, IterableDataset)
    first = next(iter(stream))
    np.testing.assert_array_equal(_label(first), masks["img0"])


@pytest.mark.parametrize("mask_ext", [".png", ".tif"])
def test_16bit_masks_keep_values(tmp_path, mask_ext):
    _, mask = _write_pair(tmp_path / "i", tmp_path / "m", "a", mask_ext=mask_ext, max_id=900, dtype=np.uint16)
    mask[0, 0] = 65535
    Image.fromarray(mask).save(tmp_path / "m" / f"a{mask_ext}")
    dataset = load_segmentation_dataset((tmp_path / "i", tmp_path / "m"))
    label = _label(dataset[0])
    assert label.dtype == np.uint16
    np.testing.assert_array_equal(label, mask)
    assert label.max() == 65535 and np.any((label > 255) & (label < 65535))


def _make_layout(root, layout, split, n=2, extra_images=0, mask_ext=".png", dtype=np.uint8, max_id=20):
    image_rel, mask_rel = OFFICIAL_LAYOUTS[layout].splits[split]
    masks = []
    for i in range(n):
        _, mask = _write_pair(root / image_rel, root / mask_rel, f"{i:06d}", seed=i, image_ext=".jpg",
                              mask_ext=mask_ext, dtype=dtype, max_id=max_id)
        masks.append(mask)
    for i in range(extra_images):  # e.g. VOC's JPEGImages holds unannotated images too
        Image.new("RGB", (8, 8)).save(root / image_rel / f"extra{i}.jpg")
    return masks


def test_official_layouts(tmp_path):
    masks = _make_layout(tmp_path, "coco_stuff", "train")
    dataset = load_segmentation_dataset(tmp_path, split="train", layout="coco_stuff")
    assert len(dataset) == 2
    np.testing.assert_array_equal(_label(dataset[0]), masks[0])

    _make_layout(tmp_path, "voc20", "validation", extra_images=3)
    voc = load_segmentation_dataset(tmp_path, split="val", layout="voc20")
    assert len(voc) == 2  # unannotated JPEGImages are skipped

    # ADE-847: 16-bit tif masks with 65535 as ignore; the layout keeps 65535 by default.
    ade = _make_layout(tmp_path, "ade847", "validation", mask_ext=".tif", dtype=np.uint16, max_id=847)
    ade[0][0, :3] = 65535
    Image.fromarray(ade[0]).save(tmp_path / OFFICIAL_LAYOUTS["ade847"].splits["validation"][1] / "000000.tif")
    ade_ds = load_segmentation_dataset(tmp_path, split="test", layout="ade847")
    np.testing.assert_array_equal(_label(ade_ds[0]), ade[0])
    with pytest.raises(ValueError, match="valid class id"):
        load_segmentation_dataset(tmp_path, split="validation", layout="ade847", ignore_index=255)

    with pytest.raises(ValueError, match="no 'train' split"):
        load_segmentation_dataset(tmp_path, split="train", layout="ade847")
    with pytest.raises(FileNotFoundError, match="pc59"):
        load_segmentation_dataset(tmp_path, split="validation", layout="pc59")
    with pytest.raises(ValueError, match="Unknown layout"):
        load_segmentation_dataset(tmp_path, layout="cityscapes")


def test_16bit_ignore_mapped_to_255_for_small_datasets(tmp_path):
    _, mask = _write_pair(tmp_path / "i", tmp_path / "m", "a", max_id=100, dtype=np.uint16)
    mask[:2] = 65535
    Image.fromarray(mask).save(tmp_path / "m" / "a.png")
    dataset = load_segmentation_dataset((tmp_path / "i", tmp_path / "m"), source_ignore_value=65535)
    label = dataset[0]["label"]
    assert label.dtype == np.uint8  # every value fits in 8 bits after the remap (an array: no PIL round trip)
    expected = mask.astype(np.int64)
    expected[expected == 65535] = 255
    np.testing.assert_array_equal(np.asarray(label), expected)


def _hub_style_dataset(n=3, image_column="image", label_column="mask"):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)) for _ in range(n)]
    masks = [rng.integers(0, 5, (16, 20)).astype(np.uint8) for _ in range(n)]
    features = Features({image_column: ImageFeature(), label_column: ImageFeature(), "id": ClassLabel(names=["x", "y", "z"])})
    data = {image_column: images, label_column: [Image.fromarray(m) for m in masks], "id": [0, 1, 2][:n]}
    return Dataset.from_dict(data, features=features), masks


def test_parquet_file_directory_and_streaming(tmp_path):
    dataset, masks = _hub_style_dataset()
    (tmp_path / "pq" / "data").mkdir(parents=True)
    dataset.to_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"))
    dataset.select([0]).to_parquet(str(tmp_path / "pq" / "data" / "validation-00000-of-00001.parquet"))
    cache = str(tmp_path / "cache")

    train = load_segmentation_dataset(tmp_path / "pq", split="train", cache_dir=cache)
    assert {"image", "label"} <= set(train.column_names) and "mask" not in train.column_names
    assert len(train) == 3
    np.testing.assert_array_equal(_label(train[2]), masks[2])
    val = load_segmentation_dataset(tmp_path / "pq", split="validation", cache_dir=cache)
    assert len(val) == 1
    single = load_segmentation_dataset(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet", cache_dir=cache)
    assert len(single) == 3

    stream = load_segmentation_dataset(tmp_path / "pq", split="train", streaming=True)
    assert isinstance(stream, IterableDataset)
    examples = list(stream)
    assert len(examples) == 3
    np.testing.assert_array_equal(_label(examples[1]), masks[1])


def test_explicit_column_names(tmp_path):
    dataset, masks = _hub_style_dataset(image_column="photo", label_column="seg_map")
    dataset.to_parquet(str(tmp_path / "x.parquet"))
    with pytest.raises(ValueError, match="image_column"):
        load_segmentation_dataset(tmp_path / "x.parquet", cache_dir=str(tmp_path / "c"))
    loaded = load_segmentation_dataset(
        tmp_path / "x.parquet", image_column="photo", label_column="seg_map", cache_dir=str(tmp_path / "c")
    )
    assert {"image", "label"} <= set(loaded.column_names)
    np.testing.assert_array_equal(_label(loaded[0]), masks[0])
    with pytest.raises(ValueError, match="does not exist"):
        load_segmentation_dataset(tmp_path / "x.parquet", image_column="nope", cache_dir=str(tmp_path / "c"))


def test_mask_column_preferred_over_classification_label(tmp_path):
    dataset, masks = _hub_style_dataset()
    dataset = dataset.rename_column("id", "label")  # a ClassLabel "label" next to the "mask"
    dataset.save_to_disk(str(tmp_path / "d"))
    loaded = load_segmentation_dataset(tmp_path / "d")
    np.testing.assert_array_equal(_label(loaded[0]), masks[0])
    assert loaded[0]["original_label"] == 0


def test_parquet_splits_follow_datasets_naming_rules(tmp_path):
    # Split folders (data/train/, data/val/) as datasets infers them for Hub repositories; "val" answers "validation".
    dataset, _ = _hub_style_dataset()
    for split, rows in (("train", [0, 1]), ("val", [2])):
        (tmp_path / "pq" / "data" / split).mkdir(parents=True)
        dataset.select(rows).to_parquet(str(tmp_path / "pq" / "data" / split / "shard-0.parquet"))
    cache = str(tmp_path / "cache")
    assert len(load_segmentation_dataset(tmp_path / "pq", split="train", cache_dir=cache)) == 2
    assert len(load_segmentation_dataset(tmp_path / "pq", split="validation", cache_dir=cache)) == 1
    with pytest.raises(ValueError, match="available splits"):
        load_segmentation_dataset(tmp_path / "pq", split="extra", cache_dir=cache)


def test_plain_parquet_image_structs_are_decoded(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    table = pa.table({"image": [png(np.zeros((3, 4, 3), np.uint8))], "annotation": [png(mask)]})
    pq.write_table(table, tmp_path / "raw.parquet")  # no `datasets` feature metadata
    loaded = load_segmentation_dataset(tmp_path / "raw.parquet", cache_dir=str(tmp_path / "c"))
    assert isinstance(loaded.features["label"], ImageFeature)
    np.testing.assert_array_equal(_label(loaded[0]), mask)


def test_save_to_disk_dataset_and_dict(tmp_path):
    dataset, masks = _hub_style_dataset()
    dataset.save_to_disk(str(tmp_path / "single"))
    loaded = load_segmentation_dataset(tmp_path / "single")
    np.testing.assert_array_equal(_label(loaded[0]), masks[0])

    DatasetDict({"train": dataset, "validation": dataset.select([1])}).save_to_disk(str(tmp_path / "dict"))
    val = load_segmentation_dataset(tmp_path / "dict", split="val")
    assert len(val) == 1
    np.testing.assert_array_equal(_label(val[0]), masks[1])
    with pytest.raises(ValueError, match="available splits"):
        load_segmentation_dataset(tmp_path / "dict", split="unlabeled")


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_segmentation_dataset(str(tmp_path / "nothing" / "here.parquet"))


# --------------------------------------------------------------------------- label remapping


def test_reduce_labels_and_label_map(tmp_path):
    mask = np.array([[0, 1, 2], [3, 255, 4]], dtype=np.uint8)
    os.makedirs(tmp_path / "i")
    os.makedirs(tmp_path / "m")
    Image.new("RGB", (3, 2)).save(tmp_path / "i" / "a.png")
    Image.fromarray(mask).save(tmp_path / "m" / "a.png")
    pair = (tmp_path / "i", tmp_path / "m")

    reduced = _label(load_segmentation_dataset(pair, reduce_labels=True)[0])
    np.testing.assert_array_equal(reduced, [[255, 0, 1], [2, 255, 3]])

    # Entries chain, as in the hub mean_iou metric: 1 -> 2 -> 3.
    mapped = _label(load_segmentation_dataset(pair, label_map={1: 2, 2: 3, 4: 255})[0])
    np.testing.assert_array_equal(mapped, [[0, 3, 3], [3, 255, 255]])

    with pytest.raises(ValueError, match="mutually exclusive"):
        load_segmentation_dataset(pair, reduce_labels=True, label_map={1: 2})


def test_remap_labels_dtypes():
    for dtype in (np.uint8, np.uint16, np.int32, np.int64):
        label = np.array([[0, 1, 2, 7]], dtype=dtype)
        # A swap written as a chain collapses (1 -> 2 -> 1), exactly as in the metric.
        np.testing.assert_array_equal(remap_labels(label, label_map={1: 2, 2: 1}), [[0, 1, 1, 7]])
        np.testing.assert_array_equal(remap_labels(label, label_map={2: 1, 1: 2}), [[0, 2, 2, 7]])
        np.testing.assert_array_equal(remap_labels(label, reduce_labels=True), [[255, 0, 1, 6]])
    wide = np.array([[65535, 300]], dtype=np.uint16)
    np.testing.assert_array_equal(remap_labels(wide, source_ignore_value=65535, ignore_index=1000), [[1000, 300]])
    assert remap_labels(wide).dtype == np.int64


def test_add_transform_keeps_the_remapping(tmp_path):
    mask = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    os.makedirs(tmp_path / "i")
    os.makedirs(tmp_path / "m")
    Image.new("RGB", (2, 2)).save(tmp_path / "i" / "a.png")
    Image.fromarray(mask).save(tmp_path / "m" / "a.png")
    dataset = load_segmentation_dataset((tmp_path / "i", tmp_path / "m"), reduce_labels=True)
    transformed = add_transform(dataset, EvalTransform())
    np.testing.assert_array_equal(transformed[0]["label"], mask.astype(np.int64) - 1)


def test_coco_stuff_raw_label_map():
    mapping = coco_stuff_raw_label_map()
    contiguous = sorted(v for v in mapping.values() if v != 255)
    assert contiguous == list(range(171))
    assert mapping[0] == 0 and mapping[181] == 170 and mapping[11] == 255 and mapping[91] == 80
    # Applied with the chained meaning, every raw id lands where the table says (no entry feeds a later one).
    raw = np.arange(256, dtype=np.uint8)
    expected = np.array([mapping.get(v, v) for v in range(256)])
    np.testing.assert_array_equal(remap_labels(raw, label_map=mapping), expected)


@pytest.mark.parametrize(
    "label_map", [{1: 2, 2: 3}, {1: 2, 2: 1}, {0: 255, 255: 0}, {3: 1, 1: 3, 5: 255}], ids=str
)
def test_loader_and_metric_read_label_map_the_same_way(label_map):
    """`label_map` means one thing: remapping in the loader then scoring equals scoring with the metric's map."""
    from catseg_hf.evaluation import StreamingMeanIoU

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 6, (8, 9)).astype(np.uint8)
    reference[0, :3] = 255
    prediction = rng.integers(0, 6, (8, 9))
    in_metric = StreamingMeanIoU(num_labels=6, ignore_index=255, label_map=label_map)
    in_metric.update(prediction, reference)
    in_loader = StreamingMeanIoU(num_labels=6, ignore_index=255)
    in_loader.update(prediction, remap_labels(reference, label_map=label_map))
    np.testing.assert_array_equal(in_metric.confusion_matrix, in_loader.confusion_matrix)
    # And the hub metric's own loop, entry after entry, gives the same ids.
    chained = reference.astype(np.int64)
    for old, new in label_map.items():
        chained[chained == old] = new
    np.testing.assert_array_equal(remap_labels(reference, label_map=label_map), chained)


# --------------------------------------------------------------------------- class names


def test_class_names_from_json_and_features(tmp_path):
    (tmp_path / "names.json").write_text(json.dumps(["wall", "sky", "tree"]))
    assert load_class_names(class_names_file=tmp_path / "names.json") == ["wall", "sky", "tree"]
    (tmp_path / "id2label.json").write_text(json.dumps({"1": "b", "0": "a"}))
    assert load_class_names(class_names_file=tmp_path / "id2label.json") == ["a", "b"]
    assert load_class_names(str(tmp_path)) == ["a", "b"]  # a directory with id2label.json

    dataset, _ = _hub_style_dataset()
    assert load_class_names(dataset) == ["x", "y", "z"]  # ClassLabel feature
    labelled = Dataset.from_dict(
        {"label": [0]}, features=Features({"label": ClassLabel(names=["cat", "dog"])})
    )
    assert load_class_names(DatasetDict({"train": labelled})) == ["cat", "dog"]

    plain = Dataset.from_dict({"label": [0]})
    with pytest.raises(ValueError, match="class_names_file"):
        load_class_names(plain)
    # Benchmark and layout names are answered from the one registry (the lists ship with the package).
    assert len(load_class_names("coco_stuff")) == 171 and load_class_names("ade150") == load_class_names("a150")
    (tmp_path / "bad.json").write_text(json.dumps({"0": "a", "2": "c"}))
    with pytest.raises(ValueError, match="without gaps"):
        load_class_names(class_names_file=tmp_path / "bad.json")


# --------------------------------------------------------------------------- transforms


def test_shortest_edge_sizes():
    assert shortest_edge_size(480, 640, 384, 1333) == (384, 512)
    assert shortest_edge_size(640, 480, 384, 1333) == (512, 384)
    assert shortest_edge_size(100, 1000, 384, 1333) == (133, 1333)  # long side capped
    assert shortest_edge_size(427, 640, 640, 2560) == (640, 959)
    image = Image.new("RGB", (640, 427))
    assert resize_shortest_edge(image).size == (959, 640)
    array = np.zeros((427, 640, 3), dtype=np.uint8)
    assert resize_shortest_edge(array, 320, 2560).shape == (320, 480, 3)


def test_resize_label_nearest_keeps_16bit_values():
    label = np.array([[1000, 2], [65535, 300]], dtype=np.uint16)
    out = resize_label_nearest(label, (5, 7))
    assert out.dtype == np.uint16 and set(np.unique(out)) == {2, 300, 1000, 65535}
    ref = F.interpolate(torch.from_numpy(label.astype(np.float64))[None, None], size=(5, 7), mode="nearest")
    np.testing.assert_array_equal(out, ref[0, 0].numpy().astype(np.uint16))


def _random_example(seed, size=(90, 120), num_classes=6):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    # Blocky labels so that nearest resizing keeps several classes.
    coarse = rng.integers(0, num_classes, size=(size[0] // 10 + 1, size[1] // 10 + 1))
    label = np.kron(coarse, np.ones((10, 10), dtype=np.int64))[: size[0], : size[1]].astype(np.uint8)
    label[:3, :3] = 255
    return image, label


def test_train_transform_shapes_and_label_values():
    image, label = _random_example(0)
    before = set(np.unique(label).tolist())
    for seed in range(5):
        out_img, out_lab = train_transform(Image.fromarray(image), Image.fromarray(label), np.random.default_rng(seed),
                                           crop_size=64, min_size=72)
        assert out_img.shape == (64, 64, 3) and out_img.dtype == np.uint8
        assert out_lab.shape == (64, 64) and out_lab.dtype == np.int64
        assert set(np.unique(out_lab).tolist()) <= before | {255}
    # Default (official) sizes: shorter side 384, 384x384 crop.
    out_img, out_lab = train_transform(image, label, np.random.default_rng(0))
    assert out_img.shape == (384, 384, 3) and out_lab.shape == (384, 384)


def test_train_transform_flip_is_consistent_between_image_and_label():
    # Encode the label in the image so that any misalignment is visible; no resize (short side
    # already equals min_size) and no colour jitter, so the correspondence must be exact.
    _, label = _random_example(1, size=(64, 100))
    wide = label.astype(np.int64)
    image = np.stack([wide * 10 % 256, wide, np.zeros_like(wide)], axis=-1).astype(np.uint8)
    kwargs = dict(crop_size=48, min_size=64, color_aug=False)
    flipped_img, flipped_lab = train_transform(image, label, np.random.default_rng(3), flip_prob=1.0, **kwargs)
    plain_img, plain_lab = train_transform(image, label, np.random.default_rng(3), flip_prob=0.0, **kwargs)
    np.testing.assert_array_equal(flipped_img, plain_img[:, ::-1])
    np.testing.assert_array_equal(flipped_lab, plain_lab[:, ::-1])
    np.testing.assert_array_equal(flipped_img[..., 1], flipped_lab)  # image and label still aligned
    # The crop is a real window of the input.
    rows = [r for r in range(64 - 48 + 1) for c in range(100 - 48 + 1)
            if np.array_equal(label[r : r + 48, c : c + 48], plain_lab)]
    assert rows


def test_train_transform_pads_small_images():
    image = np.full((10, 100, 3), 7, dtype=np.uint8)
    label = np.ones((10, 100), dtype=np.uint8)
    # max_size caps the long side at 100, so the image stays 10x100: smaller than the crop.
    out_img, out_lab = train_transform(image, label, np.random.default_rng(0), crop_size=32, min_size=32,
                                       max_size=100, color_aug=False)
    assert out_lab.shape == (32, 32)
    assert np.all(out_lab[10:] == 255) and np.all(out_lab[:10] == 1)
    assert np.all(out_img[10:] == 128) and np.all(out_img[:10] == 7)
    out_img0, _ = train_transform(image, label, np.random.default_rng(0), crop_size=32, min_size=32,
                                  max_size=100, color_aug=False, image_pad_value=0)
    assert np.all(out_img0[10:] == 0)


def test_train_transform_determinism_by_seed():
    image, label = _random_example(2)
    batch = {"image": [Image.fromarray(image)] * 3, "label": [Image.fromarray(label)] * 3}
    a = TrainTransform(crop_size=48, min_size=64, seed=11)(batch)
    b = TrainTransform(crop_size=48, min_size=64, seed=11)(batch)
    c = TrainTransform(crop_size=48, min_size=64, seed=12)(batch)
    assert set(a) == {"image", "label"}
    for x, y in zip(a["image"] + a["label"], b["image"] + b["label"]):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a["image"], c["image"]))
    # Successive examples of one call get different augmentations.
    assert not np.array_equal(a["image"][0], a["image"][1])


def test_cat_max_ratio_constraint_rejects_single_category_crops():
    label = np.zeros((200, 200), dtype=np.uint8)
    label[:, 140:] = 1  # class 0 covers 70% of the image
    label[:5] = 255  # ignored pixels do not count

    def good_fraction(ratio):
        good = 0
        for seed in range(200):
            y0, x0, h, w = sample_crop(label, 100, np.random.default_rng(seed), cat_max_ratio=ratio, ignore_index=255)
            assert (h, w) == (100, 100)
            window = label[y0 : y0 + h, x0 : x0 + w]
            counts = np.bincount(window[window != 255].ravel(), minlength=2)
            good += (counts > 0).sum() > 1 and counts.max() < 0.75 * counts.sum()
        return good / 200

    unconstrained, constrained = good_fraction(1.0), good_fraction(0.75)
    # A 100x100 window is "good" (both classes, none >= 75%) only for x0 >= 65: ~36% of the
    # time; with up to 10 retries the constraint almost always finds one.
    assert unconstrained < 0.5
    assert constrained > 0.9


def test_color_aug_ssd_properties():
    image, _ = _random_example(3)
    out = color_aug_ssd(image, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, color_aug_ssd(image, np.random.default_rng(0)))
    changed = [not np.array_equal(color_aug_ssd(image, np.random.default_rng(s)), image) for s in range(20)]
    assert sum(changed) >= 15  # 4 independent coin flips: unchanged only ~1/16 of the time
    # Grey pixels stay grey through saturation/hue steps (only brightness/contrast change them).
    grey = np.full((4, 4, 3), 100, dtype=np.uint8)
    for seed in range(10):
        out = color_aug_ssd(grey, np.random.default_rng(seed))
        assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])


def test_hsv_conversion_follows_opencv_8bit_conventions():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(1, 400, 3), dtype=np.uint8)
    hsv = rgb_to_hsv_uint8(pixels)
    for (r, g, b), (h, s, v) in zip(pixels[0], hsv[0]):
        ref_h, ref_s, ref_v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert abs(int(v) - round(ref_v * 255)) == 0
        assert abs(int(s) - ref_s * 255) <= 0.51
        hue_err = abs(int(h) - ref_h * 180)
        assert min(hue_err, 180 - hue_err) <= 1.0  # fixed-point tables: within one 2-degree step
    np.testing.assert_array_equal(rgb_to_hsv_uint8(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)),
                                  [[[0, 255, 255], [60, 255, 255], [120, 255, 255]]])
    back = hsv_to_rgb_uint8(hsv).astype(int)
    assert np.abs(back - pixels).max() <= 6  # 8-bit hue has 2-degree steps


def test_eval_transform():
    image = Image.new("RGB", (40, 30), (1, 2, 3))
    label = Image.fromarray(np.full((30, 40), 4, dtype=np.uint8))
    out = EvalTransform()({"image": [image], "label": [label]})
    assert out["image"][0].shape == (30, 40, 3) and out["label"][0].dtype == np.int64
    resized = EvalTransform(short=60)({"image": [image], "label": [label]})
    assert resized["image"][0].shape == (60, 80, 3)
    assert resized["label"][0].shape == (30, 40)  # labels stay at the original resolution


# --------------------------------------------------------------------------- collator


def _tokens():
    return {"input_ids": torch.randint(0, 100, (5, 2, 77)), "attention_mask": torch.ones(5, 2, 77, dtype=torch.long)}


def test_collator_shapes_padding_and_tokens():
    rng = np.random.default_rng(0)
    examples = [
        {"image": rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), "label": rng.integers(0, 5, (50, 70))},
        {"image": Image.fromarray(rng.integers(0, 256, (64, 40, 3), dtype=np.uint8)),
         "label": Image.fromarray(rng.integers(0, 5, (64, 40)).astype(np.uint8))},
    ]
    tokens = _tokens()
    batch = CATSegTrainingCollator(tokens)(examples)
    assert set(batch) == {"pixel_values", "labels", "input_ids", "attention_mask"}
    assert batch["pixel_values"].shape == (2, 3, 384, 384) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (2, 64, 96) and batch["labels"].dtype == torch.int64  # 70 -> 96 (x32)
    assert torch.all(batch["labels"][0, 50:] == 255) and torch.all(batch["labels"][0, :, 70:] == 255)
    assert torch.all(batch["labels"][1, :, 40:] == 255)
    np.testing.assert_array_equal(batch["labels"][0, :50, :70].numpy(), examples[0]["label"])
    assert batch["input_ids"] is tokens["input_ids"] and batch["attention_mask"] is tokens["attention_mask"]


def test_collator_normalisation_matches_direct_computation():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (30, 45, 3), dtype=np.uint8), rng.integers(0, 256, (20, 64, 3), dtype=np.uint8)]
    examples = [{"image": img, "label": np.zeros(img.shape[:2], dtype=np.int64)} for img in images]
    mean = np.array(CLIP_PIXEL_MEAN, dtype=np.float32)
    std = np.array(CLIP_PIXEL_STD, dtype=np.float32)
    # Direct computation: normalise on the 0-255 scale, then zero-pad to (32, 64).
    expected = np.zeros((2, 3, 32, 64), dtype=np.float32)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        expected[i, :, :h, :w] = ((img.astype(np.float32) - mean) / std).transpose(2, 0, 1)

    # With the CLIP resolution equal to the padded size, the resize is the identity.
    same_size = CATSegTrainingCollator(None, clip_resolution=(32, 64))(examples)
    np.testing.assert_allclose(same_size["pixel_values"].numpy(), expected, rtol=0, atol=1e-6)
    assert set(same_size) == {"pixel_values", "labels"}

    resized = CATSegTrainingCollator(None, clip_resolution=24)(examples)
    reference = F.interpolate(torch.from_numpy(expected), size=(24, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized["pixel_values"], reference, rtol=0, atol=1e-6)


def test_collator_refuses_label_ids_outside_the_vocabulary():
    """5 classes: ids 0..4 and the ignore id 255 are labels; anything else stops with the ids and the fix."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (8, 8)).astype(np.uint8)  # uint8 masks, the usual dtype, are accepted
    label[0, 0] = 255
    collator = CATSegTrainingCollator(_tokens())
    assert collator([{"image": image, "label": label}])["labels"].dtype == torch.int64
    shifted = label.copy()
    shifted[1, :3] = 5
    with pytest.raises(ValueError, match=r"Example 1: label id\(s\) 5 on 3 pixel\(s\).*5 training classes.*reduce_labels"):
        collator([{"image": image, "label": label}, {"image": image, "label": shifted}])


def test_collator_errors():
    collator = CATSegTrainingCollator(_tokens())
    with pytest.raises(ValueError, match="differ"):
        collator([{"image": np.zeros((8, 8, 3), np.uint8), "label": np.zeros((8, 9), np.int64)}])
    with pytest.raises(KeyError, match="remove_unused_columns"):
        collator([{"pixel_values": np.zeros((8, 8, 3), np.uint8)}])
    with pytest.raises(TypeError, match="return_tensors"):
        CATSegTrainingCollator({"input_ids": [[1, 2]]})


def test_end_to_end_synthetic_to_batches():
    dataset, names = make_synthetic_dataset("train", 4, seed=0, image_size=64)
    dataset = add_transform(dataset, TrainTransform(crop_size=64, min_size=64, seed=0))
    # Prompt tokens for the dataset's vocabulary: the collator refuses label ids outside it.
    tokens = {"input_ids": torch.randint(0, 100, (len(names), 1, 77)), "attention_mask": torch.ones(len(names), 1, 77, dtype=torch.long)}
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=CATSegTrainingCollator(tokens, clip_resolution=64))
    batches = list(loader)
    assert len(batches) == 2
    assert batches[0]["pixel_values"].shape == (2, 3, 64, 64)
    assert batches[0]["labels"].shape == (2, 64, 64)
    assert int(batches[0]["labels"].max()) < len(names)


def test_streaming_pipeline_to_batches():
    dataset, _ = make_synthetic_dataset("train", 3, seed=0, image_size=64)
    stream = add_transform(dataset.to_iterable_dataset(), TrainTransform(crop_size=48, min_size=64, seed=0))
    loader = torch.utils.data.DataLoader(stream, batch_size=2, collate_fn=CATSegTrainingCollator(None, clip_resolution=32))
    shapes = [tuple(batch["labels"].shape) for batch in loader]
    assert shapes == [(2, 64, 64), (1, 64, 64)]  # 48 rounded up to a multiple of 32


def test_train_transform_in_dataloader_workers():
    dataset, _ = make_synthetic_dataset("train", 1, seed=0, image_size=64)
    dataset = add_transform(dataset.select([0] * 8), TrainTransform(crop_size=32, min_size=64, seed=0, color_aug=False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=list)

    def epoch():
        return [example["image"] for batch in loader for example in batch]

    torch.manual_seed(0)
    first, second = epoch(), epoch()
    torch.manual_seed(0)
    again = epoch()
    assert len({img.tobytes() for img in first}) == 8  # workers do not repeat each other
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))  # epochs differ
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # reproducible with torch's seed
