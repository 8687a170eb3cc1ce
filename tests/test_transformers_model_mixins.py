"""transformers' own `ModelTesterMixin` and `ConfigTester` (from its source distribution) against a tiny CAT-Seg.

The mixins are loaded at test time by `tests/transformers_common.py`; nothing of them is copied here. What is ours:
the model tester below (the part the `*ModelTester` classes of transformers' model tests play), two tests given
CAT-Seg's inputs or layout as transformers' CLIP tests do for CLIPModel (eager vs SDPA, composite SDPA dispatch), and
one skip, which transformers makes for CLIPModel too, with its reason. The other skips are the mixin's own: tests
that need an accelerator, DeepSpeed, flash attention or the kernels library, and tests of what CAT-Seg has not
(language-model heads, token-embedding resizing, mixture of experts, rotary embeddings, tensor-parallel plans, a
cache).
"""

from __future__ import annotations

import tempfile
import unittest

import torch
from parameterized import parameterized

from catseg_hf.configuration_catseg import CATSegConfig
from catseg_hf.modeling_catseg import CATSegForSemanticSegmentation, CATSegModel
from catseg_hf.testing_utils import tiny_catseg_config, tiny_clip_config_dict
from tests.transformers_common import load_transformers_test_module

modeling_common = load_transformers_test_module("test_modeling_common")
configuration_common = load_transformers_test_module("test_configuration_common")

ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
floats_tensor = modeling_common.floats_tensor
ids_tensor = modeling_common.ids_tensor
TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION = modeling_common.TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION


class CATSegModelTester:
    """Builds a tiny CAT-Seg and its inputs, with the attributes `ModelTesterMixin` reads.

    The mixin's notion of "layers" is the CLIP vision tower's: hidden states and attentions are those of its standard
    blocks. CAT-Seg runs the last vision block in dense mode (no attention between tokens), so of `vision_layers`
    blocks, `vision_layers - 1` report attentions, and the hidden states are the embeddings plus those blocks' outputs.
    """

    def __init__(
        self,
        parent,
        batch_size: int = 2,
        num_classes: int = 3,
        text_length: int = 7,
        image_size: int = 64,
        patch_size: int = 16,
        vision_layers: int = 2,
        text_layers: int = 2,
        vision_hidden_size: int = 32,
        text_hidden_size: int = 16,
        num_attention_heads: int = 2,
        is_training: bool = True,
    ):
        self.parent = parent
        # batch_size and num_classes are coprime on purpose: tests that cut every input along dim 0 into batch_size
        # rows (test_batching_equivalence) then cut the images and leave the class inputs (T, P, L) whole.
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.text_length = text_length
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = 3
        self.vision_layers = vision_layers
        self.text_layers = text_layers
        self.hidden_size = vision_hidden_size
        self.text_hidden_size = text_hidden_size
        self.num_attention_heads = num_attention_heads
        self.is_training = is_training
        # How the classes are given: "input_ids" (tokenised prompts, through the text tower) or "class_embeddings".
        self.class_inputs = "input_ids"
        # The CLIP vision blocks that report attentions (all but the dense last one) ...
        self.num_hidden_layers = vision_layers - 1
        # ... and the hidden states: their input embeddings, then each of those blocks' output.
        self.expected_num_hidden_layers = vision_layers
        # Class token and patch tokens of a CLIP view.
        self.seq_length = 1 + (image_size // patch_size) ** 2

    def get_clip_config_dict(self) -> dict:
        clip = tiny_clip_config_dict(image_size=self.image_size, patch_size=self.patch_size)
        clip["vision_config"].update(
            hidden_size=self.hidden_size,
            intermediate_size=2 * self.hidden_size,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.num_attention_heads,
        )
        # A narrow text tower keeps OpenAI's 49408-token table (and its special ids) under the mixin's 1M parameters.
        clip["text_config"].update(
            hidden_size=self.text_hidden_size,
            intermediate_size=2 * self.text_hidden_size,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.num_attention_heads,
        )
        return clip

    def get_config(self) -> CATSegConfig:
        return tiny_catseg_config(
            clip_config=self.get_clip_config_dict(),
            clip_resolution=self.image_size,
            # Two vision blocks leave one standard block to tap; both decoder stages read it.
            guidance_layer_indices=[0, 0],
            num_attention_heads=self.num_attention_heads,
        )

    def prepare_config_and_inputs(self):
        config = self.get_config()
        text_config = config.clip_config.text_config
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        # Start-of-text, a random name, end-of-text (OpenAI's 49406 and 49407; the text tower is read at the latter),
        # then padding: a prompt as the CLIP tokenizer lays it out, one template per class.
        name_length = self.text_length - 3
        input_ids = torch.full((self.num_classes, 1, self.text_length), text_config.pad_token_id, dtype=torch.long)
        input_ids[..., 0] = text_config.bos_token_id
        name_ids = ids_tensor([self.num_classes, 1, name_length], vocab_size=text_config.bos_token_id - 1) + 1
        input_ids[..., 1 : 1 + name_length] = name_ids
        input_ids[..., 1 + name_length] = text_config.eos_token_id
        attention_mask = torch.zeros_like(input_ids)
        attention_mask[..., : 2 + name_length] = 1
        labels = ids_tensor([self.batch_size, self.image_size, self.image_size], vocab_size=self.num_classes)
        return config, pixel_values, input_ids, attention_mask, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, input_ids, attention_mask, _ = self.prepare_config_and_inputs()
        device = modeling_common.torch_device
        inputs_dict = {"pixel_values": pixel_values.to(device)}
        if self.class_inputs == "class_embeddings":
            projection_dim = config.clip_config.projection_dim
            class_embeddings = floats_tensor([self.num_classes, config.num_prompt_templates, projection_dim])
            inputs_dict["class_embeddings"] = torch.nn.functional.normalize(class_embeddings, dim=-1).to(device)
        else:
            inputs_dict["input_ids"] = input_ids.to(device)
            inputs_dict["attention_mask"] = attention_mask.to(device)
        return config, inputs_dict

    def create_and_check_model(self, config, pixel_values, input_ids, attention_mask, labels):
        model = CATSegForSemanticSegmentation(config).to(modeling_common.torch_device).eval()
        with torch.no_grad():
            outputs = model(
                pixel_values=pixel_values,
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_intermediates=True,
            )
        grid = self.image_size // self.patch_size
        self.parent.assertEqual(outputs.logits.shape, (self.batch_size, self.num_classes, 4 * grid, 4 * grid))
        self.parent.assertEqual(
            outputs.class_embeddings.shape, (self.num_classes, 1, config.clip_config.projection_dim)
        )

    def create_and_check_loss(self, config, pixel_values, input_ids, attention_mask, labels):
        model = CATSegForSemanticSegmentation(config).to(modeling_common.torch_device).train()
        outputs = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        self.parent.assertEqual(outputs.loss.shape, ())
        self.parent.assertTrue(torch.isfinite(outputs.loss))


class CATSegModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (CATSegModel, CATSegForSemanticSegmentation)
    # Inputs besides the main one (`pixel_values`) that test_eager_matches_sdpa_inference passes.
    additional_model_inputs = ["class_embeddings"]
    # As for CLIPModel (and CLIPSegModel): no token-embedding resizing on a vision-language model.
    test_resize_embeddings = False
    # A CLIPModel inside (config.clip_config): the attention implementation is set per sub-config, as for CLIPModel.
    _is_composite = True
    # The mixin runs test_can_init_all_missing_weights only for models it dates from 2023 on (by a copyright line
    # this repository's files do not have) unless this is set; CAT-Seg's `_init_weights` covers every weight.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The tensors here are tiny: one thread does them in the same time, and several threads sharing busy cores
        # wait on each other (a forward took 0.04 s with one thread and 1-5 s with two on a loaded 2-core machine).
        cls._num_threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls._num_threads)
        super().tearDownClass()

    def setUp(self):
        self.model_tester = CATSegModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=CATSegConfig,
            has_text_modality=False,
            common_properties=["num_attention_heads", "projection_dim"],
            hidden_dim=32,
            clip_resolution=64,
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # CAT-Seg is not in transformers' own semantic-segmentation mapping, which is how the mixin decides to add
        # labels; both classes compute the loss.
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=False)
        if "input_ids" not in inputs_dict:
            # Without prompts, an `attention_mask` can only be the mixin's stand-in mask over the image tokens
            # (test_eager_matches_sdpa_inference); CAT-Seg's `attention_mask` is that of `input_ids`.
            inputs_dict.pop("attention_mask", None)
        if return_labels:
            batch_size, _, height, width = inputs_dict["pixel_values"].shape
            inputs_dict["labels"] = torch.zeros(
                [batch_size, height, width], dtype=torch.long, device=modeling_common.torch_device
            )
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_loss(self):
        self.model_tester.create_and_check_loss(*self.model_tester.prepare_config_and_inputs())

    @parameterized.expand(TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
    def test_eager_matches_sdpa_inference(
        self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
    ):
        # The mixin passes the main input and `additional_model_inputs`, each grown to 7 rows with random values:
        # random token ids are no prompts (no end-of-text token), random class embeddings are 7 classes. The outputs
        # it compares are the vision tower's hidden states.
        self.model_tester.class_inputs = "class_embeddings"
        modeling_common._test_eager_matches_sdpa_inference(
            self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
        )

    def test_sdpa_can_dispatch_composite_models(self):
        # The mixin looks for a vision tower and a language model on the model itself, and skips when there are none;
        # CAT-Seg's towers are CLIP's, under `clip`. As transformers' CLIP tests do for CLIPModel, check both towers.
        for model_class in self.all_model_classes:
            config, _ = self.model_tester.prepare_config_and_inputs_for_common()
            with tempfile.TemporaryDirectory() as folder:
                model_class(config).save_pretrained(folder)
                model_sdpa = model_class.from_pretrained(folder)
                model_eager = model_class.from_pretrained(folder, attn_implementation="eager")
            self.assertEqual(model_sdpa.config._attn_implementation, "sdpa")
            self.assertEqual(model_eager.config._attn_implementation, "eager")
            for tower in ("vision_model", "text_model"):
                self.assertEqual(getattr(model_sdpa.clip, tower).config._attn_implementation, "sdpa")
                self.assertEqual(getattr(model_eager.clip, tower).config._attn_implementation, "eager")
            for name, module in model_eager.named_modules():
                if type(module).__name__.endswith("Attention") and getattr(module, "config", None) is not None:
                    self.assertEqual(module.config._attn_implementation, "eager", msg=name)

    @unittest.skip(reason="CLIPModel does not have input/output embeddings")
    def test_model_get_set_embeddings(self):
        # Skipped as for CLIPModel, which CAT-Seg holds whole: two towers, no single input embedding table.
        pass
