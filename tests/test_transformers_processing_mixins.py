"""transformers' own common tests of image processors and processors, run against a tiny CAT-Seg.

The mixins come from transformers' source distribution (see `tests/transformers_common.py`). The testers below only
describe CAT-Seg's shapes; where a mixin test has to be adapted to CAT-Seg, the override says why.

Every test that is skipped here is skipped by the mixin itself, for the same reason as for CLIP: the same mixins run
on `CLIPImageProcessor`/`CLIPImageProcessorPil` and `CLIPProcessor` (with the tokenizer below) skip exactly the same
tests (measured with transformers 5.24):
- `@slow` tests (`test_pil_can_run_without_torchvision`, `test_can_compile_torchvision_backend`, the latter also needs
  an accelerator);
- `test_image_processor_preprocess_arguments`: "No validation found for `preprocess` method" (neither processor
  declares `_valid_processor_keys` nor filters kwargs with a warning; ours raises on unknown kwargs instead);
- `test_override_instance_attributes_does_not_affect_other_instances`: neither has a dict `size` and a list
  `image_mean` (CLIP keeps a tuple; CAT-Seg has no `size`, see `test_instances_do_not_share_mutable_settings` in
  tests/test_image_processing.py);
- processor tests for chat templates, videos, audio and multimodal tokens, which neither processor has.
"""

import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import unittest

import numpy as np
import torch
from transformers import CLIPTokenizer
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.testing_utils import slow

from catseg_hf import CATSegConfig, CATSegImageProcessor, CATSegProcessor
from catseg_hf.processing_catseg import first_synonym
from catseg_hf.tokenization import CLIP_BOS_TOKEN, CLIP_EOS_TOKEN, CLIP_PAD_TOKEN, build_clip_vocab
from tests.transformers_common import load_transformers_test_module


image_processing_common = load_transformers_test_module("test_image_processing_common")
processing_common = load_transformers_test_module("test_processing_common")

# A tiny sliding window: a 48 canvas cut into 32 tiles with stride 16 gives 2 x 2 tiles + the global view.
TINY_IMAGE_PROCESSOR_SETTINGS = {
    "clip_resolution": 32,
    "sliding_canvas_size": 48,
    "sliding_tile_size": 32,
    "sliding_stride": 16,
    "size_divisibility": 8,
}


class CATSegImageProcessingTester(image_processing_common.ImageProcessingTester):
    mode = "sliding"

    def __init__(self, parent, **kwargs):
        for key, value in TINY_IMAGE_PROCESSOR_SETTINGS.items():
            kwargs.setdefault(key, value)
        kwargs.setdefault("mode", self.mode)
        kwargs.setdefault("image_mean", [120.0, 115.0, 105.0])
        kwargs.setdefault("image_std", [70.0, 65.0, 70.0])
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("do_convert_rgb", True)
        super().__init__(parent, batch_size=5, num_channels=3, min_resolution=10, max_resolution=60, **kwargs)
        self.num_labels = 6
        self.logits_size = 8

    def _get_image_processing_classes(self):
        # transformers finds the classes from the name of the folder of the test file (tests/models/<model>/); ours
        # lives in tests/, so read what catseg_hf registered for CAT-Seg's config instead.
        return dict(IMAGE_PROCESSOR_MAPPING[CATSegConfig])

    @property
    def num_views(self) -> int:
        tiles_per_side = (self.sliding_canvas_size - self.sliding_tile_size) // self.sliding_stride + 1
        return tiles_per_side**2 + 1

    def expected_output_image_shape(self, images):
        # Every image gives the same shape whatever its size: square views, and in sliding mode a views axis.
        view_shape = (self.num_channels, self.clip_resolution, self.clip_resolution)
        return view_shape if self.mode == "whole" else (self.num_views, *view_shape)

    def prepare_post_process_semantic_segmentation_inputs(self):
        views = () if self.mode == "whole" else (self.num_views,)
        logits = torch.randn(self.batch_size, *views, self.num_labels, self.logits_size, self.logits_size)
        # Without target sizes the maps have the logits size (whole) or the canvas size (sliding).
        side = self.logits_size if self.mode == "whole" else self.sliding_canvas_size
        expected_shape = {"num_labels": self.num_labels, "height": side, "width": side}
        return {"outputs": SemanticSegmenterOutput(logits=logits)}, expected_shape


class CATSegWholeImageProcessingTester(CATSegImageProcessingTester):
    mode = "whole"


class CATSegImageProcessingTest(
    image_processing_common.ImageProcessingTestMixin,
    image_processing_common.PostProcessSemanticSegmentationTestMixin,
    unittest.TestCase,
):
    image_processor_tester_class = CATSegImageProcessingTester
    # Runs the dtype/device casting checks of BatchFeature.to (off unless a test class asks for them).
    test_cast_dtype = True

    @slow
    def test_pil_can_run_without_torchvision(self):
        # The mixin's check loads the saved processor in a fresh interpreter by its registered name, which only works
        # for models inside transformers; a CAT-Seg folder loads there as remote code. Same check otherwise: without
        # torchvision (and without catseg_hf), the "pil" backend gives the same outputs.
        image_processor = self.image_processing_classes["pil"](**self.image_processor_dict)
        inputs = self.image_processor_tester.prepare_processor_inputs(equal_resolution=False)
        expected = image_processor(**inputs, return_tensors="np")
        script = textwrap.dedent(
            """
            import pickle, sys
            sys.modules["torchvision"] = None
            sys.modules["catseg_hf"] = None
            from transformers import AutoImageProcessor
            folder, inputs_path, outputs_path = sys.argv[1:]
            processor = AutoImageProcessor.from_pretrained(folder, backend="pil", trust_remote_code=True)
            assert type(processor).__name__ == "CATSegImageProcessor" and "catseg_hf" not in type(processor).__module__
            with open(inputs_path, "rb") as f:
                inputs = pickle.load(f)
            with open(outputs_path, "wb") as f:
                pickle.dump(dict(processor(**inputs, return_tensors="np")), f)
            """
        )
        with tempfile.TemporaryDirectory() as folder:
            image_processor.save_pretrained(folder)
            inputs_path, outputs_path = os.path.join(folder, "inputs.pkl"), os.path.join(folder, "outputs.pkl")
            with open(inputs_path, "wb") as f:
                pickle.dump(inputs, f)
            env = dict(os.environ, HF_MODULES_CACHE=os.path.join(folder, "modules"))
            result = subprocess.run(
                [sys.executable, "-c", script, folder, inputs_path, outputs_path],
                capture_output=True,
                text=True,
                cwd=folder,
                env=env,
            )
            self.assertEqual(result.returncode, 0, result.stderr[-3000:])
            with open(outputs_path, "rb") as f:
                outputs = pickle.load(f)
        np.testing.assert_equal(outputs, dict(expected))


class CATSegWholeImageProcessingTest(CATSegImageProcessingTest):
    image_processor_tester_class = CATSegWholeImageProcessingTester


def _tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with the 512 byte-level symbols, a few merges and OpenAI's conventions (id 0 pads).

    It declares a context of 128 positions, so that the `max_length` values of the mixin (117, 112, 76) are within
    the text encoder's context, which the processor enforces."""
    merges = [("l", "o"), ("lo", "w</w>"), ("e", "r</w>"), ("n", "e"), ("ne", "w"), ("new", "er</w>"), ("lo", "w")]
    return CLIPTokenizer(
        vocab=build_clip_vocab(merges),
        merges=merges,
        unk_token=CLIP_EOS_TOKEN,
        bos_token=CLIP_BOS_TOKEN,
        eos_token=CLIP_EOS_TOKEN,
        pad_token=CLIP_PAD_TOKEN,
        split_special_tokens=True,
        model_max_length=128,
    )


class CATSegProcessorTest(processing_common.ProcessorTesterMixin, unittest.TestCase):
    processor_class = CATSegProcessor

    @classmethod
    def _setup_image_processor(cls):
        return CATSegImageProcessor(**TINY_IMAGE_PROCESSOR_SETTINGS)

    @classmethod
    def _setup_tokenizer(cls):
        return _tiny_clip_tokenizer()

    @staticmethod
    def prepare_processor_dict():
        return {"prompt_templates": ["a photo of a {}.", "{}"]}

    def prepare_text_inputs(self, batch_size=None, modalities=None):
        # CAT-Seg's text is a vocabulary of class names, which must be unique; the mixin's batches repeat a text.
        text = super().prepare_text_inputs(batch_size=batch_size, modalities=modalities)
        if isinstance(text, str):
            return text
        return [name if name not in text[:index] else f"{name} {index}" for index, name in enumerate(text)]

    def _expected_token_ids(self, processor, names, **tokenizer_kwargs):
        """What the processor's text path is: the tokenizer over every template filled with every name, as
        (names, templates, length)."""
        names = [names] if isinstance(names, str) else names
        templates = processor.prompt_templates
        prompts = [template.format(first_synonym(name)) for name in names for template in templates]
        encoded = processor.tokenizer(prompts, return_tensors="pt", **tokenizer_kwargs)
        return {key: value.reshape(len(names), len(templates), -1) for key, value in encoded.items()}

    def test_subprocessor_defaults_0_text(self):
        # The mixin compares `processor(text=...)` with `tokenizer(text)`; CAT-Seg's text path puts each class name
        # into every prompt template and returns (T, P, L) ids, so compare with the tokenizer over those prompts.
        processor = self.processor_class(**self.prepare_components(), **self.prepare_processor_dict())
        text = self.prepare_text_inputs()
        merged = processor._merge_kwargs(
            processor.valid_processor_kwargs,
            tokenizer_init_kwargs=processor.tokenizer.init_kwargs,
            return_tensors="pt",
        )["text_kwargs"]
        merged.setdefault("max_length", processor.context_length)
        merged.pop("return_tensors")
        expected = self._expected_token_ids(processor, text, **merged)
        inputs = processor(text=text, return_tensors="pt")
        self.assertEqual(set(inputs.keys()), {"input_ids", "attention_mask"})
        for key in inputs:
            torch.testing.assert_close(inputs[key], expected[key])

    # In the two kwargs tests below the mixin reads the prompt length as `len(inputs["input_ids"][0])`, the second
    # axis of a (batch, length) tensor; CAT-Seg's ids are (T, P, L), so the length is the last axis. Otherwise the same
    # checks: defaults given to the sub-processors at init reach them, and call kwargs override them.
    def _test_modality_processor_defaults_preserved_by_modality_kwargs(self, modality):
        attributes = self.processor_class.get_attributes()
        self.maybe_skip_typed_test_for_modality(modality, attributes)
        components = self.prepare_components()
        components["image_processor"] = self.get_component("image_processor", do_rescale=True, rescale_factor=-1.0)
        max_length = self.images_text_kwargs_max_length
        components["tokenizer"] = self.get_component("tokenizer", max_length=max_length, padding="max_length")
        processor = self.processor_class(**components, **self.prepare_processor_dict())

        inputs = processor(
            text=self.prepare_text_inputs(modalities=modality),
            images=self.prepare_images_inputs(),
            return_tensors="pt",
        )
        self._check_modality_outputs(inputs, modality)
        self.assertEqual(inputs[self.text_input_name].shape[-1], max_length)

    def _test_kwargs_overrides_default_modality_processor_kwargs(self, modality):
        attributes = self.processor_class.get_attributes()
        self.maybe_skip_typed_test_for_modality(modality, attributes)
        components = self.prepare_components()
        components["tokenizer"] = self.get_component("tokenizer", padding=False)
        processor = self.processor_class(**components, **self.prepare_processor_dict())

        max_length = self.images_text_kwargs_max_length
        inputs = processor(
            text=self.prepare_text_inputs(modalities=modality),
            images=self.prepare_images_inputs(),
            max_length=max_length,
            padding="max_length",
            do_rescale=True,
            rescale_factor=-1.0,
            return_tensors="pt",
        )
        self._check_modality_outputs(inputs, modality)
        self.assertEqual(inputs[self.text_input_name].shape[-1], max_length)

    def test_call_returns_catseg_shapes(self):
        processor = self.get_processor()
        image = np.random.randint(0, 255, (30, 40, 3), dtype=np.uint8)
        inputs = processor(images=[image, image], text=["cat", "dog", "sky"], return_tensors="pt")
        self.assertEqual(inputs["pixel_values"].shape, (2, 5, 3, 32, 32))
        self.assertEqual(inputs["input_ids"].shape, (3, 2, processor.context_length))
