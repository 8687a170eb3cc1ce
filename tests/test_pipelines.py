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
from catseg_hf import CATSegModel, CATSegProcessor
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
    assert isinstance(segmenter.model, CATSegModel)
    assert isinstance(segmenter.processor, CATSegProcessor)
    assert segmenter.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_single_image_sliding_default(segmenter, image):
    result = segmenter(image, candidate_labels=LABELS)
    check_annotations(result, image.size, LABELS)


def test_single_image_matches_model_and_processor(segmenter, model_dir, image, whole_result):
    check_annotations(whole_result, image.size, LABELS)
    processor = CATSegProcessor.from_pretrained(model_dir)
    inputs = processor(images=image, text=LABELS, mode="whole")
    with torch.no_grad():
        outputs = segmenter.model(**inputs.to(segmenter.device))
    label_map = processor.post_process_semantic_segmentation(outputs)[0].cpu().numpy()
    expected = {LABELS[k]: label_map == k for k in np.unique(label_map)}
    assert [entry["label"] for entry in whole_result] == list(expected)
    for entry in whole_result:
        np.testing.assert_array_equal(np.asarray(entry["mask"]) == 255, expected[entry["label"]])


def test_list_input_batches_and_accepts_paths_and_arrays(segmenter, image, whole_result, tmp_path):
    path = tmp_path / "image.png"
    image.save(path)
    other = random_image(33, 41, seed=1)
    inputs = [str(path), np.asarray(other), image]
    results = segmenter(inputs, candidate_labels=LABELS, mode="whole", batch_size=2)
    assert isinstance(results, list) and len(results) == 3
    for result, size in zip(results, [image.size, other.size, image.size]):
        check_annotations(result, size, LABELS)
    # A path, a PIL image, alone or batched with another image: the same segmentation.
    for result in (results[0], results[2]):
        assert [entry["label"] for entry in result] == [entry["label"] for entry in whole_result]
        for got, want in zip(result, whole_result):
            np.testing.assert_array_equal(np.asarray(got["mask"]), np.asarray(want["mask"]))
    assert segmenter([], candidate_labels=LABELS) == []


def test_input_errors_are_explained(segmenter, image):
    with pytest.raises(ValueError, match="candidate_labels"):
        segmenter(image)  # the tiny model has no default vocabulary
    with pytest.raises(ValueError, match="single string"):
        segmenter(image, candidate_labels="wall, floor")
    with pytest.raises(TypeError, match="local path"):
        segmenter(12, candidate_labels=LABELS)


def test_builtin_image_segmentation_with_default_vocabulary(model_dir, image, whole_result, tmp_path):
    model = AutoModel.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    set_default_vocabulary(model, processor, LABELS)
    processor.image_processor.mode = "whole"  # the built-in pipeline runs the processor's default mode
    folder = tmp_path / "with-vocabulary"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    saved = json.loads((folder / "config.json").read_text())
    assert {int(k): v for k, v in saved["id2label"].items()} == dict(enumerate(LABELS))
    assert np.asarray(saved["default_class_input_ids"]).shape[:2] == (len(LABELS), 1)
    assert saved["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_catseg.CATSegModel"
    assert (folder / "modeling_catseg.py").is_file()

    # No "model not supported" error from the pipeline's model-class check.
    with CaptureLogger(transformers_logging.get_logger("transformers.pipelines.base")) as captured:
        segmenter = pipeline("image-segmentation", model=str(folder))
    assert "not supported" not in captured.out
    assert isinstance(segmenter.model, CATSegModel)
    result = segmenter(image)
    check_annotations(result, image.size, LABELS)
    # The stored (trimmed) token ids give exactly what the labels give when passed with each call.
    assert [entry["label"] for entry in result] == [entry["label"] for entry in whole_result]
    for got, want in zip(result, whole_result):
        np.testing.assert_array_equal(np.asarray(got["mask"]), np.asarray(want["mask"]))

    # The zero-shot pipeline falls back to the default vocabulary when no labels are given.
    zero_shot = ZeroShotImageSegmentationPipeline(model=segmenter.model, processor=processor)
    default_result = zero_shot(image)
    assert [entry["label"] for entry in default_result] == [entry["label"] for entry in whole_result]


def test_set_default_vocabulary_checks_its_inputs(model_dir):
    model = AutoModel.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="single string"):
        set_default_vocabulary(model, processor, "wall, floor")
    with pytest.raises(ValueError, match="Duplicate"):
        set_default_vocabulary(model, processor, ["wall", "wall"])
    with pytest.raises(ValueError, match="prompt template"):
        set_default_vocabulary(model, processor, ["wall"], prompt_templates=["a {}", "the {}"])
    assert model.config.default_class_input_ids is None
