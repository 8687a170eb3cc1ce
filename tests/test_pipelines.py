"""The `zero-shot-image-segmentation` pipeline and transformers' built-in `image-segmentation` pipeline on a tiny
random CAT-Seg folder.

A random model predicts arbitrary classes, so the tests check the output format and its consistency with the
model + processor run by hand, not what is segmented. Most calls use whole mode (one view per image) to stay fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline
from transformers import logging as transformers_logging
from transformers.testing_utils import CaptureLogger

import catseg_hf  # noqa: F401  (registers the task)
from catseg_hf import CATSegForSemanticSegmentation, CATSegProcessor
from catseg_hf.pipelines import ZeroShotImageSegmentationPipeline, set_default_vocabulary
from catseg_hf.testing_utils import save_tiny_model_folder

LABELS = ["wall", "floor", "sofa, couch", "lamp"]




def random_image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def check_annotations(annotations, size, candidates):
    """The image-segmentation semantic format: one entry per class present, in label order, masks partitioning
    the image at its original size."""
    assert isinstance(annotations, list) and annotations
    labels = [entry["label"] for entry in annotations]
    assert all(label in candidates for label in labels)
    assert labels == sorted(labels, key=candidates.index)  # class order, each class once
    coverage = np.zeros(size[::-1], dtype=np.int64)
    for entry in annotations:
        assert set(entry) == {"score", "label", "mask"}
        assert entry["score"] is None
        mask = entry["mask"]
        assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == size
        values = np.asarray(mask)
        assert set(np.unique(values).tolist()) <= {0, 255}
        assert values.any(), f"the mask of {entry['label']!r} is empty but the class is listed as present"
        coverage += values == 255
    assert (coverage == 1).all(), "the masks of one image must not overlap and must cover it"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bpe_path):
    return save_tiny_model_folder(tmp_path_factory.mktemp("catseg-tiny"), bpe_path)


@pytest.fixture(scope="module")
def segmenter(model_dir):
    return pipeline("zero-shot-image-segmentation", model=str(model_dir))


@pytest.fixture(scope="module")
def image():
    return random_image(50, 70, seed=0)


@pytest.fixture(scope="module")
def whole_result(segmenter, image):
    return segmenter(image, candidate_labels=LABELS, mode="whole")


def test_task_loads_model_and_processor_from_the_folder(segmenter):
    assert isinstance(segmenter, ZeroShotImageSegmentationPipeline)
    assert isinstance(segmenter.model, CATSegForSemanticSegmentation)
    assert isinstance(segmenter.processor, CATSegProcessor)
    assert segmenter.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_single_image_sliding_default(segmenter, image):
    result = segmenter(image, candidate_labels=LABELS)
    check_annotations(result, image.size, LABELS)


def test_single_image_matches_model_and_processor(segmenter, model_dir, image, whole_result):
    check_annotations(whole_result, image.size, LABELS)
    processor = CATSegProcessor.from_pretrained(model_dir)
    inputs = processor(images=image, text=LABELS, mode="whole", return_tensors="pt")
    with torch.no_grad():
        outputs = segmenter.model(**inputs.to(segmenter.device))
    label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].numpy()
    expected = {LABELS[k]: label_map == k for k in np.unique(label_map)}
    assert [entry["label"] for entry in whole_result] == list(expected)
    for entry in whole_result:
        np.testing.assert_array_equal(np.asarray(entry["mask"]) == 255, expected[entry["label"]])


def masks_of(result):
    return [(entry["label"], np.asarray(entry["mask"])) for entry in result]


def assert_same_segmentation(got, want):
    assert [label for label, _ in masks_of(got)] == [label for label, _ in masks_of(want)]
    for (_, got_mask), (_, want_mask) in zip(masks_of(got), masks_of(want)):
        np.testing.assert_array_equal(got_mask, want_mask)


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_batches_give_the_masks_of_one_image_at_a_time(segmenter, mode, tmp_path):
    images = [random_image(50, 70, seed=0), random_image(33, 41, seed=1), random_image(64, 48, seed=2)]
    one_at_a_time = [segmenter(image, candidate_labels=LABELS, mode=mode) for image in images]
    batched = segmenter(images, candidate_labels=LABELS, mode=mode, batch_size=2)
    assert isinstance(batched, list) and len(batched) == 3
    for result, single, image in zip(batched, one_at_a_time, images):
        check_annotations(result, image.size, LABELS)
        assert_same_segmentation(result, single)


def test_list_input_accepts_paths_and_arrays(segmenter, image, whole_result, tmp_path):
    path = tmp_path / "image.png"
    image.save(path)
    other = random_image(33, 41, seed=1)
    results = segmenter([str(path), np.asarray(other), image], candidate_labels=LABELS, mode="whole", batch_size=2)
    assert isinstance(results, list) and len(results) == 3
    for result, size in zip(results, [image.size, other.size, image.size]):
        check_annotations(result, size, LABELS)
    for result in (results[0], results[2]):
        assert_same_segmentation(result, whole_result)
    assert segmenter([], candidate_labels=LABELS) == []
    assert len(segmenter.vocabularies) == 1  # the labels were embedded once for all these calls


def test_input_errors_are_explained(segmenter, image):
    with pytest.raises(ValueError, match="candidate_labels"):
        segmenter(image)  # the tiny model has no default vocabulary
    with pytest.raises(TypeError, match="candidate_labels must be"):
        segmenter(image, candidate_labels=5)
    with pytest.raises(TypeError, match="local path"):
        segmenter(12, candidate_labels=LABELS)
    with pytest.raises(FileNotFoundError, match="no-such-image.png"):
        segmenter("no-such-image.png", candidate_labels=LABELS)
    with pytest.raises(TypeError, match="unknown arguments"):
        segmenter(image, candidate_labels=LABELS, treshold=0.5)
    # One string is one class (a name "a, b" lists synonyms of that class).
    only = segmenter(image, candidate_labels="wall, partition", mode="whole")
    assert [entry["label"] for entry in only] == ["wall, partition"]


@pytest.fixture(scope="module")
def folder_with_vocabulary(model_dir, tmp_path_factory):
    model = AutoModel.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    set_default_vocabulary(model, processor, LABELS)
    folder = tmp_path_factory.mktemp("with-vocabulary")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_builtin_image_segmentation_with_default_vocabulary(folder_with_vocabulary, image, whole_result):
    folder = folder_with_vocabulary
    saved = json.loads((folder / "config.json").read_text())
    assert {int(k): v for k, v in saved["id2label"].items()} == dict(enumerate(LABELS))
    assert np.asarray(saved["default_class_input_ids"]).shape[:2] == (len(LABELS), 1)
    assert saved["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_catseg.CATSegForSemanticSegmentation"
    assert (folder / "modeling_catseg.py").is_file()

    # No "model not supported" error from the pipeline's model-class check.
    with CaptureLogger(transformers_logging.get_logger("transformers.pipelines.base")) as captured:
        segmenter = pipeline("image-segmentation", model=str(folder))
    assert "not supported" not in captured.out
    assert isinstance(segmenter.model, CATSegForSemanticSegmentation)
    segmenter.image_processor.mode = "whole"  # the built-in pipeline runs the processor's default mode
    result = segmenter(image)
    check_annotations(result, image.size, LABELS)
    # The stored (trimmed) token ids give exactly what the labels give when passed with each call.
    assert_same_segmentation(result, whole_result)

    # The zero-shot pipeline falls back to the default vocabulary when no labels are given.
    zero_shot = ZeroShotImageSegmentationPipeline(model=segmenter.model, processor=AutoProcessor.from_pretrained(folder))
    assert_same_segmentation(zero_shot(image, mode="whole"), whole_result)


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_builtin_image_segmentation_batches_like_one_image_at_a_time(folder_with_vocabulary, mode):
    segmenter = pipeline("image-segmentation", model=str(folder_with_vocabulary))
    segmenter.image_processor.mode = mode
    images = [random_image(50, 70, seed=0), random_image(33, 41, seed=1), random_image(64, 48, seed=2)]
    one_at_a_time = [segmenter(image) for image in images]
    batched = segmenter(images, batch_size=2)
    assert len(batched) == 3
    for result, single, image in zip(batched, one_at_a_time, images):
        check_annotations(result, image.size, LABELS)
        assert_same_segmentation(result, single)


def test_set_default_vocabulary_checks_its_inputs(model_dir):
    model = AutoModel.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="Duplicate"):
        set_default_vocabulary(model, processor, ["wall", "wall"])
    with pytest.raises(ValueError, match="prompt template"):
        set_default_vocabulary(model, processor, ["wall"], prompt_templates=["a {}", "the {}"])
    assert model.config.default_class_input_ids is None
