"""CATSegForSemanticSegmentation on tiny random configurations: shapes, presets, top-k, padding, loss, modes, saving,
half precision, export; the blocks and the inference kernels (`catseg_kernels`) against a straightforward reference."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation

from catseg_hf import CATSegConfig, CATSegForSemanticSegmentation, CATSegModel, catseg_kernels, modeling_catseg
from catseg_hf.modeling_catseg import (
    CATSegClassAggregation,
    CATSegImageFeatures,
    compute_cost_volume,
    shifted_window_attention_mask,
)
from catseg_hf.testing_utils import tiny_catseg_config
from catseg_hf.training.optim import apply_clip_finetune_policy


def make_model(seed: int = 0, **overrides) -> CATSegForSemanticSegmentation:
    torch.manual_seed(seed)
    model = CATSegForSemanticSegmentation(tiny_catseg_config(**overrides)).eval()
    # Non-trivial padding vectors, so the padding path is really exercised (they start at zero, as in the reference).
    with torch.no_grad():
        for layer in model.aggregator.layers:
            layer.class_aggregation.padding_token.normal_()
            layer.class_aggregation.padding_guidance.normal_()
    return model


def random_inputs(model: CATSegForSemanticSegmentation, batch: int = 2, num_classes: int = 5, templates: int | None = None):
    templates = templates or model.config.num_prompt_templates
    generator = torch.Generator().manual_seed(1)
    resolution = model.config.clip_resolution
    pixel_values = torch.randn(batch, 3, resolution, resolution, generator=generator)
    input_ids = torch.randint(1, 49000, (num_classes, templates, 77), generator=generator)
    input_ids[..., 0] = 49406
    input_ids[..., 9] = 49407
    input_ids[..., 10:] = 0
    return pixel_values, input_ids


# ------------------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize(
    "variant, vision, text, projection, resolution, taps, rows, patch",
    [
        ("base", (768, 12), (512, 12, 8), 512, 384, [3, 7], 197, 16),
        ("large", (1024, 24), (768, 12, 12), 768, 336, [7, 15], 577, 14),
    ],
)
def test_presets_have_the_released_geometry(variant, vision, text, projection, resolution, taps, rows, patch):
    config = CATSegConfig.from_preset(variant)
    with torch.device("meta"):
        model = CATSegModel(config)
    clip = model.clip
    assert clip.vision_model.embeddings.patch_embedding.weight.shape == (vision[0], 3, patch, patch)
    assert len(clip.vision_model.encoder.layers) == vision[1]
    assert clip.vision_model.embeddings.position_embedding.weight.shape == (rows, vision[0])
    assert clip.text_model.embeddings.token_embedding.weight.shape == (49408, text[0])
    assert len(clip.text_model.encoder.layers) == text[1]
    assert clip.text_model.encoder.layers[0].self_attn.num_heads == text[2]
    assert clip.visual_projection.weight.shape == (projection, vision[0])
    assert clip.text_projection.weight.shape == (projection, text[0])
    assert config.clip_resolution == resolution and config.guidance_layer_indices == taps
    assert config.feature_resolution == (24, 24) and config.logits_resolution == (96, 96)
    assert model.guidance_upsamplers[0].weight.shape == (vision[0], 256, 2, 2)
    assert model.guidance_upsamplers[1].weight.shape == (vision[0], 128, 4, 4)
    aggregator = model.aggregator
    assert aggregator.cost_embedding.weight.shape == (128, 1, 7, 7)
    assert aggregator.appearance_guidance_projection[0].weight.shape == (128, projection, 3, 3)
    assert aggregator.text_guidance_projection[0].weight.shape == (128, projection)
    assert len(aggregator.layers) == 2
    assert aggregator.layers[0].spatial_aggregation.blocks[0].attention.num_heads == 4
    assert aggregator.layers[0].class_aggregation.attention.num_heads == 4
    assert aggregator.decoder_stages[0].convs[0].weight.shape == (64, 128, 3, 3)
    assert aggregator.decoder_stages[1].convs[0].weight.shape == (32, 64, 3, 3)
    assert aggregator.head.weight.shape == (1, 32, 3, 3)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="clip_finetune"):
        tiny_catseg_config(clip_finetune="lora")
    with pytest.raises(ValueError, match="guidance layer"):
        tiny_catseg_config(guidance_layer_indices=[1, 3])  # block 3 is the last (dense) one
    with pytest.raises(ValueError, match="prompt_templates"):
        tiny_catseg_config(prompt_templates=["no placeholder"])


# ------------------------------------------------------------------------------------------------ forward contract


def test_forward_shapes_and_embeddings_contract():
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=3, num_classes=6)
    with torch.no_grad():
        embeddings = model.get_class_embeddings(input_ids)
        assert embeddings.shape == (6, 1, 16)
        torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(6, 1))
        by_ids = model(pixel_values=pixel_values, input_ids=input_ids)
        by_embeddings = model(pixel_values=pixel_values, class_embeddings=embeddings)
    assert by_ids.logits.shape == (3, 6, 16, 16)
    torch.testing.assert_close(by_ids.logits, by_embeddings.logits)
    assert by_ids.loss is None and by_ids.selected_classes is None


def test_several_templates_and_non_square_grid():
    model = make_model(prompt_templates=["a photo of a {}.", "a {} in the scene", "{}"], window_size=2)
    pixel_values, input_ids = random_inputs(model, batch=1, num_classes=4)
    assert input_ids.shape[1] == 3
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, input_ids=input_ids)
        non_square = model(pixel_values=torch.randn(1, 3, 64, 96), input_ids=input_ids)
    assert outputs.logits.shape == (1, 4, 16, 16)
    assert non_square.logits.shape == (1, 4, 16, 24)


def test_bad_inputs_raise_clear_errors():
    model = make_model()
    pixel_values, input_ids = random_inputs(model)
    with pytest.raises(ValueError, match="input_ids.*class_embeddings"):
        model(pixel_values=pixel_values)
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(pixel_values=pixel_values[0], input_ids=input_ids)
    with pytest.raises(ValueError, match="prompt template"):
        model(pixel_values=pixel_values, class_embeddings=torch.randn(3, 2, 16))
    with pytest.raises(ValueError, match="windows"):
        model(pixel_values=torch.randn(1, 3, 48, 48), input_ids=input_ids)  # 3x3 grid, windows of 2


def test_sliding_views_stay_in_their_image_row():
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=6, num_classes=5)
    views = pixel_values.view(2, 3, *pixel_values.shape[1:])  # 2 images of 3 views each
    with torch.no_grad():
        embeddings = model.get_class_embeddings(input_ids)
        flat = model(pixel_values=pixel_values, class_embeddings=embeddings, output_intermediates=True)
        stacked = model(pixel_values=views, class_embeddings=embeddings, output_intermediates=True)
    assert stacked.logits.shape == (2, 3, 5, 16, 16)
    torch.testing.assert_close(stacked.logits.flatten(0, 1), flat.logits, atol=1e-6, rtol=0)
    assert stacked.cost_volume.shape[:2] == (2, 3)
    with pytest.raises(ValueError, match="whole-image inputs"):
        model(pixel_values=views, class_embeddings=embeddings, labels=torch.zeros(2, 8, 8, dtype=torch.long))


def test_processor_bookkeeping_and_ambiguous_inputs_are_refused():
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=1)
    with pytest.raises(TypeError, match="view_layout"):
        model(pixel_values=pixel_values, input_ids=input_ids, view_layout=torch.zeros(1, 4))
    with torch.no_grad():
        embeddings = model.get_class_embeddings(input_ids)
    with pytest.raises(ValueError, match="either input_ids or class_embeddings"):
        model(pixel_values=pixel_values, input_ids=input_ids, class_embeddings=embeddings)
    with pytest.raises(ValueError, match="dimension 7"):
        model(pixel_values=pixel_values, class_embeddings=torch.randn(5, 1, 7))


def test_bad_model_inputs_name_what_was_wrong():
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=1, num_classes=3)
    with torch.no_grad():
        embeddings = model.get_class_embeddings(input_ids)
    with pytest.raises(ValueError, match="outside CLIP's vocabulary"):
        model.get_class_embeddings(torch.full((2, 1, 8), 10**6))
    with pytest.raises(ValueError, match="hold no prompt"):
        model.get_class_embeddings(torch.zeros(0, 1, 77, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        model.get_class_embeddings(input_ids.float())
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.get_class_embeddings(input_ids, attention_mask=torch.ones(3, 1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="0 classes"):
        model(pixel_values=pixel_values, class_embeddings=embeddings[:0])
    with pytest.raises(ValueError, match="hold no image"):
        model(pixel_values=pixel_values[:0], class_embeddings=embeddings)
    with pytest.raises(ValueError, match=r"smaller than one CLIP patch \(16 px\)"):
        model(pixel_values=torch.randn(1, 3, 8, 8), class_embeddings=embeddings)
    with pytest.raises(TypeError, match="return_tensors='pt'"):
        model(pixel_values=pixel_values.numpy(), class_embeddings=embeddings)
    with pytest.raises(ValueError, match="integer class ids"):
        model(pixel_values=pixel_values, class_embeddings=embeddings, labels=torch.zeros(1, 8, 8))
    # uint8 masks, the usual label dtype, are accepted as they are.
    loss = model(pixel_values=pixel_values, class_embeddings=embeddings, labels=torch.zeros(1, 8, 8, dtype=torch.uint8)).loss
    assert torch.isfinite(loss)


def test_ignore_index_is_ignored_with_more_than_255_classes():
    """With 300 classes, 255 is both a class id and the ignore id: the reference ignores it, so must the loss."""
    model = make_model()
    pixel_values, _ = random_inputs(model, batch=1)
    embeddings = F.normalize(torch.randn(300, 1, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    labels = torch.full((1, 6, 6), 255, dtype=torch.long)
    labels[0, :2] = 7
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, class_embeddings=embeddings, labels=labels)
    logits = F.interpolate(outputs.logits, size=(6, 6), mode="bilinear", align_corners=False)
    targets = torch.zeros_like(logits)
    targets[0, 7, :2] = 1.0  # the 255 pixels have an all-zero target
    torch.testing.assert_close(outputs.loss, F.binary_cross_entropy_with_logits(logits, targets))


def test_hidden_states_and_attentions_of_the_vision_tower():
    model = make_model()
    model.set_attn_implementation("eager")
    pixel_values, input_ids = random_inputs(model, batch=2)
    num_blocks = model.config.clip_config.vision_config.num_hidden_layers
    with torch.no_grad():
        plain = model(pixel_values=pixel_values, input_ids=input_ids)
        outputs = model(pixel_values=pixel_values, input_ids=input_ids, output_hidden_states=True, output_attentions=True)
        as_tuple = model(pixel_values=pixel_values, input_ids=input_ids, return_dict=False)
    assert plain.hidden_states is None and plain.attentions is None
    # The input embeddings and every standard block; the last block runs in dense mode (no attention between tokens).
    assert len(outputs.hidden_states) == num_blocks and len(outputs.attentions) == num_blocks - 1
    assert outputs.hidden_states[0].shape == (2, 17, 32) and outputs.attentions[0].shape == (2, 2, 17, 17)
    # Eager attention with its probabilities kept vs the kernels' path: float32 rounding (1.0e-5 measured).
    torch.testing.assert_close(outputs.logits, plain.logits, atol=2e-5, rtol=0)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], plain.logits)
    taps = model.get_image_features(pixel_values, output_hidden_states=True)
    assert taps.pooler_output.shape == (2, 16) and torch.equal(taps.pooler_output, taps.dense_embeddings[:, 0])
    assert taps.last_hidden_state.shape == (2, 17, 32)  # the vision width, as CLIP's get_image_features
    torch.testing.assert_close(taps.hidden_states[1 + model.config.guidance_layer_indices[0]], taps.guidance_taps[0])
    as_tuple_features = model.get_image_features(pixel_values, return_dict=False)
    assert isinstance(as_tuple_features, tuple) and torch.equal(as_tuple_features[0], taps.last_hidden_state)


def test_eager_and_sdpa_give_the_same_outputs():
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=2)
    with torch.no_grad():
        sdpa = model(pixel_values=pixel_values, input_ids=input_ids).logits
        model.set_attn_implementation("eager")
        assert model.clip.vision_model.config._attn_implementation == "eager"
        eager = model(pixel_values=pixel_values, input_ids=input_ids).logits
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ classes


def test_more_classes_than_pad_len_keeps_top_k_per_view():
    model = make_model()  # pad_len 8
    pixel_values, input_ids = random_inputs(model, batch=2, num_classes=13)
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, input_ids=input_ids, output_intermediates=True)
    logits, selected = outputs.logits, outputs.selected_classes
    assert logits.shape == (2, 13, 16, 16) and selected.shape == (2, 8)
    highest = outputs.cost_volume.amax(dim=(1, 3, 4))
    for view in range(2):
        expected = set(highest[view].topk(8).indices.tolist())
        assert set(selected[view].tolist()) == expected
        dropped = sorted(set(range(13)) - expected)
        assert torch.all(logits[view, dropped] == -100.0)
        assert torch.all(logits[view, sorted(expected)] != -100.0)
        assert torch.sigmoid(logits[view, dropped]).max() == 0.0


@pytest.mark.parametrize("num_classes", [5, 8, 13])
def test_class_order_does_not_matter(num_classes):
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=2, num_classes=num_classes)
    permutation = torch.randperm(num_classes, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, input_ids=input_ids).logits
        permuted = model(pixel_values=pixel_values, input_ids=input_ids[permutation]).logits
    torch.testing.assert_close(permuted, logits[:, permutation], atol=1e-5, rtol=0)


def explicit_padding_class_aggregation(module: CATSegClassAggregation, cost_embedding, text_guidance, pooling_size):
    """The straightforward reference: pad the class sequence to pad_len with the learned vectors, attend over all
    of it with softmax-free linear attention, drop the padding. `cost_embedding` is channels-last (B, T, H, W, C)."""
    cost_embedding = cost_embedding.permute(0, 1, 4, 2, 3)
    batch, num_classes, channels, height, width = cost_embedding.shape
    pooled = F.avg_pool2d(cost_embedding.flatten(0, 1), pooling_size) if tuple(pooling_size) != (1, 1) else cost_embedding.flatten(0, 1)
    ph, pw = pooled.shape[-2:]
    tokens = pooled.view(batch, num_classes, channels, ph * pw).permute(0, 3, 1, 2)  # B, HW, T, C
    guidance = text_guidance.unsqueeze(1).expand(batch, ph * pw, num_classes, -1)
    pad = module.pad_len - num_classes
    if pad > 0:
        tokens = torch.cat([tokens, module.padding_token.expand(batch, ph * pw, pad, channels)], dim=2)
        guidance = torch.cat([guidance, module.padding_guidance.expand(batch, ph * pw, pad, -1)], dim=2)
    tokens = tokens.reshape(batch * ph * pw, -1, channels)
    guidance = guidance.reshape(batch * ph * pw, tokens.shape[1], -1)
    attention = module.attention
    normed = module.norm1(tokens)
    guided = torch.cat([normed, guidance], dim=-1)
    heads = attention.num_heads
    q = (F.elu(attention.query(guided)) + 1).unflatten(-1, (heads, -1))
    k = (F.elu(attention.key(guided)) + 1).unflatten(-1, (heads, -1))
    v = attention.value(normed).unflatten(-1, (heads, -1))
    scores = torch.einsum("nlhd,nshd->nhls", q, k)
    attended = torch.einsum("nhls,nshe->nlhe", scores, v) / (scores.sum(-1).transpose(1, 2).unsqueeze(-1) + attention.eps)
    tokens = tokens + attended.flatten(2)
    tokens = tokens + module.mlp(module.norm2(tokens))
    tokens = tokens[:, :num_classes].reshape(batch, ph, pw, num_classes, channels).permute(0, 3, 4, 1, 2)
    tokens = tokens.reshape(batch * num_classes, channels, ph, pw)
    if (ph, pw) != (height, width):
        tokens = F.interpolate(tokens, size=(height, width), mode="bilinear", align_corners=True)
    return (cost_embedding + tokens.view(batch, num_classes, channels, height, width)).permute(0, 1, 3, 4, 2)


@pytest.mark.parametrize("num_classes", [3, 8, 12])
@pytest.mark.parametrize("pooling_size", [(1, 1), (2, 2)])
@pytest.mark.parametrize("path", ["block", "kernel"])
def test_exact_padding_shortcut_equals_explicit_padding(num_classes, pooling_size, path):
    model = make_model()
    module = model.aggregator.layers[0].class_aggregation
    generator = torch.Generator().manual_seed(num_classes)
    cost_embedding = torch.randn(2, num_classes, 4, 4, 32, generator=generator)
    text_guidance = torch.randn(2, num_classes, 16, generator=generator).relu()
    with torch.no_grad():
        if path == "block":
            fast = module(cost_embedding, text_guidance, pooling_size)
        else:
            fast = catseg_kernels.class_aggregation(
                module, cost_embedding, text_guidance, pooling_size, out=torch.empty_like(cost_embedding)
            )
        reference = explicit_padding_class_aggregation(module, cost_embedding, text_guidance, pooling_size)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)


def reference_shifted_window_mask(height, width, window, shift):
    """Swin's mask from its meaning: in the shifted frame, two tokens of a window may attend to each other only if
    they lie on the same side of the cyclic seam, in rows and in columns."""
    from timm.models.swin_transformer import window_partition

    rows = torch.arange(height).view(-1, 1).expand(height, width)
    cols = torch.arange(width).view(1, -1).expand(height, width)
    side = (rows >= height - shift).float() * 2 + (cols >= width - shift).float()
    windows = window_partition(side[None, :, :, None], (window, window)).flatten(1)  # (num_windows, tokens)
    return torch.where(windows[:, :, None] == windows[:, None, :], 0.0, float("-inf"))


@pytest.mark.parametrize("height, width, window, shift", [(4, 4, 2, 1), (8, 12, 4, 2), (24, 24, 12, 6)])
def test_shifted_window_mask_keeps_attention_on_one_side_of_the_seam(height, width, window, shift):
    mask = shifted_window_attention_mask(height, width, window, shift, torch.device("cpu"))
    assert torch.equal(mask, reference_shifted_window_mask(height, width, window, shift))


def test_minus_inf_window_mask_attends_as_the_references_minus_100():
    # The reference adds -100 across regions; -inf (no denormal weights in the backward) gives the same attention
    # and the same gradients.
    torch.manual_seed(0)
    mask = shifted_window_attention_mask(24, 24, 12, 6, torch.device("cpu"))
    query, key, value = (torch.randn(2 * 4, 4, 144, 32, requires_grad=True) for _ in range(3))
    grad_output = torch.randn(2 * 4, 4, 144, 32)
    results = []
    for bias in (mask, torch.where(torch.isinf(mask), -100.0, 0.0)):
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.repeat(2, 1, 1).unsqueeze(1))
        results.append((output, *torch.autograd.grad(output, (query, key, value), grad_output)))
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_cost_volume_is_cosine_similarity():
    image = torch.randn(2, 16, 4, 5)
    text = torch.randn(2, 3, 2, 16)
    cost = compute_cost_volume(image, text)
    assert cost.shape == (2, 2, 3, 4, 5)
    expected = F.cosine_similarity(image[0, :, 1, 2], text[0, 1, 0], dim=0)
    torch.testing.assert_close(cost[0, 0, 1, 1, 2], expected)


# ------------------------------------------------------------------------------------------------ training side


def test_pooling_follows_training_mode():
    model = make_model(training_pooling_size=[2, 2], inference_pooling_size=[1, 1])
    assert model.pooling_size == (1, 1)
    model.train()
    assert model.pooling_size == (2, 2)


def test_loss_counts_ignored_pixels_as_background():
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=2, num_classes=4)
    labels = torch.randint(0, 4, (2, 37, 29))
    labels[0, :5] = 255
    labels[1, :, :3] = 7  # out of [0, T): background too
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, input_ids=input_ids, labels=labels)
    logits = F.interpolate(outputs.logits, size=(37, 29), mode="bilinear", align_corners=False)
    targets = torch.stack([(labels == c) for c in range(4)], dim=1).float()
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    torch.testing.assert_close(outputs.loss, expected)


def test_loss_and_its_gradient_equal_binary_cross_entropy_against_one_hot_targets():
    model = make_model()
    torch.manual_seed(0)
    logits = (torch.randn(2, 5, 12, 10) * 8).requires_grad_()  # large logits: softplus's linear range too
    labels = torch.randint(0, 5, (2, 45, 41))
    labels[0, :7] = 255
    labels[1, 3:9, :4] = -1
    loss = model.compute_loss(logits, labels)
    (gradient,) = torch.autograd.grad(loss, logits)
    resized = F.interpolate(logits, size=(45, 41), mode="bilinear", align_corners=False)
    targets = torch.stack([(labels == c) for c in range(5)], dim=1).float()
    expected = F.binary_cross_entropy_with_logits(resized, targets)
    (expected_gradient,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("mode", ["attention", "frozen", "full"])
def test_clip_finetune_modes(mode):
    model = make_model()
    apply_clip_finetune_policy(model, mode)
    assert model.config.clip_finetune == mode
    trainable = {name for name, p in model.clip.named_parameters() if p.requires_grad}
    never = {name[len("clip."):] for name in model.parameters_without_gradient}
    all_clip = {name for name, _ in model.clip.named_parameters()}
    assert not trainable & never
    if mode == "full":
        assert trainable == all_clip - never
    elif mode == "frozen":
        assert trainable == set()
    else:
        expected = {
            f"{tower}.encoder.layers.{i}.self_attn.{proj}_proj.weight"
            for tower, layers in (("text_model", 2), ("vision_model", 4))
            for i in range(layers)
            for proj in ("q", "v")
        }
        # The last vision block runs in dense mode: its query projection is never used.
        assert trainable == expected - {"vision_model.encoder.layers.3.self_attn.q_proj.weight"}
    assert all(p.requires_grad for p in model.aggregator.parameters())
    assert all(p.requires_grad for p in model.guidance_upsamplers.parameters())
    with pytest.raises(ValueError, match="Unknown CLIP fine-tuning mode"):
        apply_clip_finetune_policy(model, "lora")


def test_every_trainable_parameter_gets_a_gradient():
    """What distributed data parallelism without `find_unused_parameters` needs, in every fine-tuning mode."""
    for mode in ("full", "attention"):
        model = make_model()
        apply_clip_finetune_policy(model, mode)
        model.train()
        pixel_values, input_ids = random_inputs(model, batch=2, num_classes=3)
        model(pixel_values=pixel_values, input_ids=input_ids, labels=torch.randint(0, 3, (2, 16, 16))).loss.backward()
        missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (mode, missing)


def test_gradients_flow_and_gradient_checkpointing_matches():
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=2, num_classes=3)
    labels = torch.randint(0, 3, (2, 32, 32))
    model.train()
    loss = model(pixel_values=pixel_values, input_ids=input_ids, labels=labels).loss
    loss.backward()
    q_grad = model.clip.text_model.encoder.layers[0].self_attn.q_proj.weight.grad
    assert q_grad is not None and q_grad.abs().sum() > 0
    assert model.aggregator.head.weight.grad.abs().sum() > 0
    model.zero_grad()
    model.activation_checkpointing_enable()
    checkpointed = model(pixel_values=pixel_values, input_ids=input_ids, labels=labels).loss
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, loss)
    assert model.aggregator.head.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ vocabulary


def test_default_vocabulary_embeddings_are_computed_once_per_text_tower_state():
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=1, num_classes=4)
    model.config.default_class_input_ids = input_ids[..., :12].tolist()
    calls = []
    handle = model.clip.text_model.embeddings.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            first = model(pixel_values=pixel_values).logits
            second = model(pixel_values=pixel_values).logits
            assert len(calls) == 1
            explicit = model(pixel_values=pixel_values, input_ids=input_ids).logits
            model(pixel_values=pixel_values, input_ids=input_ids)
            assert len(calls) == 3  # explicit ids are always encoded: the model keeps no cache of them
            model.clip.text_projection.weight.mul_(2.0)  # as a training step would
            model(pixel_values=pixel_values)
            assert len(calls) == 4
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        torch.testing.assert_close(first, explicit, atol=1e-6, rtol=0)
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------------ saving / loading


@pytest.mark.parametrize("saved_class", [CATSegForSemanticSegmentation, CATSegModel])
def test_save_load_round_trip_and_auto_classes(tmp_path, saved_class):
    torch.manual_seed(0)
    model = saved_class(tiny_catseg_config()).eval()
    pixel_values, input_ids = random_inputs(model, batch=1, num_classes=10)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, input_ids=input_ids).logits
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, CATSegConfig) and config.pad_len == 8
    assert config.architectures == [saved_class.__name__]
    assert {"AutoModel", "AutoModelForSemanticSegmentation"} <= set(config.auto_map)
    loaders = (
        CATSegForSemanticSegmentation.from_pretrained,
        CATSegModel.from_pretrained,
        AutoModel.from_pretrained,
        AutoModelForSemanticSegmentation.from_pretrained,
    )
    for load in loaders:
        loaded, info = load(tmp_path, output_loading_info=True)
        assert isinstance(loaded, CATSegForSemanticSegmentation)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        loaded.eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(pixel_values=pixel_values, input_ids=input_ids).logits, expected, rtol=0, atol=0)
        # Loading makes every parameter trainable (transformers' rule); training set-up applies the policy.
        apply_clip_finetune_policy(loaded)
        trainable = {n for n, p in loaded.clip.named_parameters() if p.requires_grad}
        assert trainable and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in trainable)
        assert not {f"clip.{n}" for n in trainable} & set(loaded.parameters_without_gradient)


def test_remote_code_loads_without_the_package(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    for name in ("modeling_catseg.py", "catseg_kernels.py", "tile_threads_catseg.py", "configuration_catseg.py"):
        assert (tmp_path / name).is_file(), name
    pixel_values, input_ids = random_inputs(model, batch=1, num_classes=3)
    torch.save({"pixel_values": pixel_values, "input_ids": input_ids}, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(model(pixel_values=pixel_values, input_ids=input_ids).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class BlockCatseg(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "catseg_hf" or name.startswith("catseg_hf."):
                    raise ImportError("catseg_hf is blocked in this test")
        sys.meta_path.insert(0, BlockCatseg())
        import torch
        from transformers import AutoModel, AutoModelForSemanticSegmentation
        torch.set_num_threads({torch.get_num_threads()})
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        for auto_class in (AutoModel, AutoModelForSemanticSegmentation):
            model = auto_class.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
            with torch.no_grad():
                logits = model(**inputs).logits
            # Since the tile threads (issue 15) the two processes differ by up to 4.8e-6 (float32 rounding; within
            # one process runs are bit-identical); the cause of the cross-process difference is not yet known.
            torch.testing.assert_close(logits, torch.load({str(tmp_path / "expected.pt")!r}), rtol=0, atol=1e-5)
            print("loaded", type(model).__module__, type(model).__name__)
        assert not any(m.startswith("catseg_hf") for m in sys.modules), "catseg_hf was imported"
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout


# ------------------------------------------------------------------------------------ inference kernels, fast paths


def test_truncated_text_encoding_equals_full_clip_text_tower():
    model = make_model(text_batch_size=3)
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.zeros(7, 1, 77, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate([3, 9, 5, 20, 4, 76, 11]):
        input_ids[row, 0, 0] = 49406
        input_ids[row, 0, 1 : length - 1] = torch.randint(1, 49000, (length - 2,), generator=generator)
        input_ids[row, 0, length - 1] = 49407
        attention_mask[row, 0, :length] = 1
    with torch.no_grad():
        fast = model.get_class_embeddings(input_ids, attention_mask)
        fast_no_mask = model.get_class_embeddings(input_ids)
        full = model.clip.get_text_features(input_ids=input_ids[:, 0], attention_mask=attention_mask[:, 0]).pooler_output
    full = full / full.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(fast[:, 0], full, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast_no_mask[:, 0], full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_classes", [5, 13])
def test_chunked_aggregation_equals_unchunked(num_classes):
    chunked = make_model(class_chunk_size=2)
    whole = make_model(class_chunk_size=0)
    whole.load_state_dict(chunked.state_dict())
    pixel_values, input_ids = random_inputs(chunked, batch=3, num_classes=num_classes)
    with torch.no_grad():
        expected = whole(pixel_values=pixel_values, input_ids=input_ids)
        actual = chunked(pixel_values=pixel_values, input_ids=input_ids)
    # Other tiles, other float32 rounding (up to 1.1e-5 measured with tile threads).
    torch.testing.assert_close(actual.logits, expected.logits, atol=2e-5, rtol=0)
    if num_classes > 8:
        assert torch.equal(actual.selected_classes, expected.selected_classes)


def reference_aggregator(aggregator, image_embeddings, class_embeddings, decoder_guidance, pooling_size):
    """The straightforward CAT-Seg aggregator, written from the reference description: guidance concatenated to
    every class's tokens (and to every pixel's class sequence), explicit class padding, softmax window attention
    with an explicit shifted-window mask, decoder guidance concatenated per class. Returns (logits, selected)."""
    from timm.models.swin_transformer import window_partition, window_reverse

    cost = compute_cost_volume(image_embeddings, class_embeddings)
    batch, templates, num_classes, height, width = cost.shape
    selected = None
    if num_classes > aggregator.config.pad_len:
        selected = aggregator.select_classes(cost)
        cost = torch.stack([cost[b][:, selected[b]] for b in range(batch)])
        class_embeddings = torch.stack([class_embeddings[b][selected[b]] for b in range(batch)])
    kept = cost.shape[2]
    x = aggregator.cost_embedding(cost.transpose(1, 2).reshape(batch * kept, templates, height, width))
    x = x.view(batch, kept, -1, height, width)  # B, T, C, H, W
    channels = x.shape[2]
    appearance = aggregator.appearance_guidance_projection(image_embeddings)  # B, G, H, W
    text = F.normalize(class_embeddings, dim=-1).mean(dim=2)
    text = aggregator.text_guidance_projection(text / text.norm(dim=-1, keepdim=True))
    for layer in aggregator.layers:
        spatial = layer.spatial_aggregation
        tokens = x.reshape(batch * kept, channels, height * width).transpose(1, 2)
        guidance = spatial.guidance_norm(appearance.flatten(2).transpose(1, 2)).repeat_interleave(kept, dim=0)
        for block in spatial.blocks:
            window, shift = block.window_geometry(height, width)
            attention = block.attention
            hidden = torch.cat([block.norm1(tokens), guidance], dim=-1).view(batch * kept, height, width, -1)
            if shift:
                hidden = torch.roll(hidden, (-shift, -shift), dims=(1, 2))
            windows = window_partition(hidden, (window, window)).view(-1, window * window, hidden.shape[-1])
            heads = attention.num_heads
            q = attention.query(windows).unflatten(-1, (heads, -1)).transpose(1, 2) * attention.scale
            k = attention.key(windows).unflatten(-1, (heads, -1)).transpose(1, 2)
            v = attention.value(windows[..., :channels]).unflatten(-1, (heads, -1)).transpose(1, 2)
            scores = q @ k.transpose(-1, -2)
            if shift:
                mask = reference_shifted_window_mask(height, width, window, shift)
                scores = (scores.view(-1, mask.shape[0], heads, *mask.shape[1:]) + mask[None, :, None]).flatten(0, 1)
            out = attention.proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(2))
            out = window_reverse(out.view(-1, window, window, channels), (window, window), height, width)
            if shift:
                out = torch.roll(out, (shift, shift), dims=(1, 2))
            tokens = tokens + out.reshape(batch * kept, height * width, channels)
            tokens = tokens + block.mlp(block.norm2(tokens))
        x = tokens.transpose(1, 2).reshape(batch, kept, channels, height, width)
        x = explicit_padding_class_aggregation(
            layer.class_aggregation, x.permute(0, 1, 3, 4, 2), text, pooling_size
        ).permute(0, 1, 4, 2, 3)
    features = x.flatten(0, 1)
    for stage, projection, guidance in zip(
        aggregator.decoder_stages, aggregator.decoder_guidance_projections, decoder_guidance
    ):
        guidance = projection(guidance).repeat_interleave(kept, dim=0)
        features = stage.convs(torch.cat([stage.upsample(features), guidance], dim=1))
    logits = aggregator.head(features).view(batch, kept, *features.shape[-2:])
    if selected is not None:
        full = torch.full((batch, num_classes, *logits.shape[-2:]), -100.0)
        for b in range(batch):
            full[b, selected[b]] = logits[b]
        logits = full
    return logits, selected


def use_smallest_tiles(monkeypatch) -> None:
    """One class map / pixel / token per tile in every inference kernel."""
    for name in (
        "SWIN_TOKENS_PER_TILE",
        "CLASS_AGGREGATION_TOKENS_PER_TILE",
        "DECODER_OUTPUT_PIXELS_PER_TILE",
        "MLP_TOKENS_PER_TILE",
    ):
        monkeypatch.setattr(catseg_kernels, name, 1)


def aggregator_inputs(num_classes: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    image_embeddings = torch.randn(2, 16, 4, 4, generator=generator)
    class_embeddings = F.normalize(torch.randn(2, num_classes, 1, 16, generator=generator), dim=-1)
    decoder_guidance = (torch.randn(2, 32, 8, 8, generator=generator), torch.randn(2, 16, 16, 16, generator=generator))
    return image_embeddings, class_embeddings, decoder_guidance


@pytest.mark.parametrize("num_classes", [3, 8, 13])
@pytest.mark.parametrize("pooling_size", [(1, 1), (2, 2)])
@pytest.mark.parametrize("path", ["blocks", "kernels", "kernels, smallest tiles"])
def test_aggregator_equals_straightforward_reference(num_classes, pooling_size, path, monkeypatch):
    """The model's blocks (the autograd path) and the inference kernels (with the default tiles and with one class
    map / pixel / token per tile) against the straightforward computation, for T below, at and above pad_len (8).
    The blocks' own reformulations are checked here (guidance projected once per image/class, exact padding
    shortcut, channels-last layout, per-class chunks), and the kernels' on top (windows cut by one gather, fused
    q/k/v projections, tiles over classes/pixels/tokens updating the buffer in place)."""
    if path == "kernels, smallest tiles":
        use_smallest_tiles(monkeypatch)
    model = make_model(window_size=2, class_chunk_size=2)  # 4x4 grid: shifted windows exercised
    image_embeddings, class_embeddings, decoder_guidance = aggregator_inputs(num_classes, seed=num_classes)
    with torch.set_grad_enabled(path == "blocks"):
        logits, selected = model.aggregator(image_embeddings, class_embeddings, decoder_guidance, pooling_size)
    with torch.no_grad():
        reference, reference_selected = reference_aggregator(
            model.aggregator, image_embeddings, class_embeddings, decoder_guidance, pooling_size
        )
    assert logits.requires_grad == (path == "blocks")
    torch.testing.assert_close(logits.detach(), reference, atol=1e-5, rtol=0)
    if num_classes > 8:
        assert torch.equal(selected, reference_selected)


@pytest.mark.parametrize("num_classes", [3, 13])
@pytest.mark.parametrize("pooling_size", [(1, 1), (2, 2)])
def test_tiled_inference_equals_the_autograd_path(num_classes, pooling_size, monkeypatch):
    """Without gradients the aggregator runs the kernels, in tiles and in place; with gradients it runs the blocks.
    Both give the same logits, and the inputs handed in are left untouched."""
    use_smallest_tiles(monkeypatch)
    model = make_model(window_size=2, class_chunk_size=0)
    image_embeddings, class_embeddings, decoder_guidance = aggregator_inputs(num_classes, seed=7)
    cost_volume = compute_cost_volume(image_embeddings, class_embeddings)
    cost_volume_before = cost_volume.clone()
    with torch.enable_grad():
        autograd_logits, _ = model.aggregator(
            image_embeddings, class_embeddings, decoder_guidance, pooling_size, cost_volume=cost_volume
        )
    with torch.no_grad():
        tiled_logits, _ = model.aggregator(
            image_embeddings, class_embeddings, decoder_guidance, pooling_size, cost_volume=cost_volume
        )
    assert autograd_logits.requires_grad and not tiled_logits.requires_grad
    torch.testing.assert_close(tiled_logits, autograd_logits.detach(), atol=1e-5, rtol=0)
    assert torch.equal(cost_volume, cost_volume_before)


@pytest.mark.parametrize("tiles", ["default", "smallest"])
def test_each_kernel_equals_its_block(tiles, monkeypatch):
    """Kernel by kernel, so that a failure names the kernel: Swin blocks, class aggregation (pooled or not) and
    residual MLP, each against the block it stands for; the decoder in CPU tiles against all classes at once."""
    if tiles == "smallest":
        use_smallest_tiles(monkeypatch)
    model = make_model(window_size=2)
    layer, aggregator = model.aggregator.layers[0], model.aggregator
    generator = torch.Generator().manual_seed(11)
    cost_embedding = torch.randn(2, 5, 4, 4, 32, generator=generator)
    appearance_guidance = torch.randn(2, 4, 4, 16, generator=generator)
    text_guidance = torch.randn(2, 5, 16, generator=generator).relu()
    decoder_guidance = [torch.randn(2, 32, 8, 8, generator=generator), torch.randn(2, 16, 16, 16, generator=generator)]

    def close(actual, expected):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)

    with torch.no_grad():
        buffer = cost_embedding.clone()  # the kernels update their buffer in place
        result = catseg_kernels.spatial_aggregation(layer.spatial_aggregation, buffer, appearance_guidance, out=buffer)
        assert result.data_ptr() == buffer.data_ptr()
        close(buffer, layer.spatial_aggregation(cost_embedding, appearance_guidance))
        for pooling_size in ((1, 1), (2, 2)):
            buffer = cost_embedding.clone()
            catseg_kernels.class_aggregation(layer.class_aggregation, buffer, text_guidance, pooling_size, out=buffer)
            close(buffer, layer.class_aggregation(cost_embedding, text_guidance, pooling_size))
        block = layer.spatial_aggregation.blocks[1]
        close(
            catseg_kernels.residual_mlp(cost_embedding, block.norm2, block.mlp),
            cost_embedding + block.mlp(block.norm2(cost_embedding)),
        )
        tile = catseg_kernels.decoder_classes_per_chunk(cost_embedding, model.config.class_chunk_size)
        assert tile == 1 if tiles == "smallest" else tile == model.config.class_chunk_size
        close(aggregator.decode(cost_embedding, decoder_guidance), aggregator.decode(cost_embedding, decoder_guidance, 0))


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("tokens_per_tile", [1, 7, catseg_kernels.MLP_TOKENS_PER_TILE])
def test_residual_mlp_with_fused_products_equals_the_block(activation, tokens_per_tile, monkeypatch):
    """The residual MLP's oneDNN products with bias, activation and residual fused (float32 CPU) against the MLP as
    the blocks run it, over tiles; under CPU autocast, in bfloat16 and for other activations the layers as written."""
    if not catseg_kernels.HAS_ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN linear")
    from timm.layers import Mlp

    monkeypatch.setattr(catseg_kernels, "MLP_TOKENS_PER_TILE", tokens_per_tile)
    torch.manual_seed(3)
    mlp = Mlp(24, 96, act_layer=torch.nn.GELU if activation == "gelu" else torch.nn.ReLU)
    norm = torch.nn.LayerNorm(24)
    hidden = torch.randn(3, 17, 24) * 3
    with torch.no_grad():
        expected = hidden + mlp(norm(hidden))
        assert catseg_kernels._onednn_activation(mlp, hidden) == (activation, "none" if activation == "gelu" else "")
        torch.testing.assert_close(catseg_kernels.residual_mlp(hidden, norm, mlp), expected, atol=1e-5, rtol=1e-5)
        # Paths the fused products do not cover: the layers as written.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert catseg_kernels._onednn_activation(mlp, hidden) is None
        assert catseg_kernels._onednn_activation(mlp.to(torch.bfloat16), hidden.bfloat16()) is None
        tanh = Mlp(24, 96, act_layer=lambda: torch.nn.GELU(approximate="tanh"))
        assert catseg_kernels._onednn_activation(tanh, hidden) is None
        torch.testing.assert_close(catseg_kernels.residual_mlp(hidden, norm, tanh), hidden + tanh(norm(hidden)))
        # The product with the residual added in its output pass (the attention's output projection), and without.
        linear, tokens, residual = torch.nn.Linear(24, 8), hidden.view(-1, 24), torch.randn(51, 8)
        torch.testing.assert_close(catseg_kernels.linear_plus(linear, tokens, residual), residual + linear(tokens))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = catseg_kernels.linear_plus(linear, tokens, residual)
        torch.testing.assert_close(plain, residual + linear(tokens), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("num_pixels, num_classes", [(1, 1), (5, 3), (7, 20)])
@pytest.mark.parametrize("with_padding", [False, True])
def test_pixel_major_class_attention_equals_the_attention(heads, num_pixels, num_classes, with_padding):
    """The class aggregation kernel's linear attention on pixel-major tokens (batched products per head, the
    normaliser as an extra key-value column) against `CATSegLinearAttention` on class-major tokens, plus the
    residual; with and without the padding classes' summed contribution."""
    from catseg_hf.modeling_catseg import CATSegLinearAttention

    torch.manual_seed(heads * 100 + num_pixels * 10 + num_classes)
    dim, guidance_dim = 8 * heads, 6
    attention = CATSegLinearAttention(dim, guidance_dim, heads, eps=1e-6).eval()
    normed = torch.randn(num_classes, num_pixels, dim)  # class-major, as the block takes it
    residual = torch.randn(num_classes, num_pixels, dim)
    guidance = torch.randn(num_classes, guidance_dim).relu()
    padding = None
    if with_padding:
        _, key, value = attention.project(torch.randn(dim), torch.randn(guidance_dim))
        padding = (torch.einsum("hd,he->hde", key, value) * 3, key * 3)
    with torch.no_grad():
        expected = residual + attention(normed[None], guidance[None], padding)[0]
        weight, terms = catseg_kernels.fused_guided_projection(attention.query, attention.key, None, guidance)
        actual = catseg_kernels.linear_attention_tile(
            attention, normed.transpose(0, 1).contiguous(), residual.transpose(0, 1).contiguous(), weight, terms,
            padding,
        )
    torch.testing.assert_close(actual.transpose(0, 1), expected, atol=1e-5, rtol=1e-5)


def test_inference_kernels_run_without_gradients_on_cpu_only(monkeypatch):
    """The one switch between blocks and kernels: gradient-free CPU calls take the kernels, every other call the
    blocks."""
    with torch.no_grad():
        assert catseg_kernels.use_inference_kernels(torch.zeros(1))
        assert not catseg_kernels.use_inference_kernels(torch.zeros(1, device="meta"))
    with torch.enable_grad():
        assert not catseg_kernels.use_inference_kernels(torch.zeros(1))
    calls = []

    def counted(name, kernel):
        def run(*args, **kwargs):
            calls.append(name)
            return kernel(*args, **kwargs)

        return run

    for name in ("inference_aggregation", "inference_image_features"):
        monkeypatch.setattr(modeling_catseg, name, counted(name, getattr(modeling_catseg, name)))
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=2)
    with torch.no_grad():
        model(pixel_values=pixel_values, input_ids=input_ids)
    assert set(calls) == {"inference_aggregation", "inference_image_features"}
    calls.clear()
    with torch.enable_grad():
        model(pixel_values=pixel_values, input_ids=input_ids)
    with torch.no_grad():
        model(pixel_values=pixel_values, input_ids=input_ids, output_hidden_states=True)
    assert calls.count("inference_image_features") == 0 and calls.count("inference_aggregation") == 2  # the two views


def test_image_features_one_view_at_a_time_equal_the_batch():
    model = make_model()
    pixel_values, _ = random_inputs(model, batch=3)
    with torch.enable_grad():
        batched = model.get_image_features(pixel_values)
    with torch.no_grad():
        per_view = model.get_image_features(pixel_values)
    for name in ("last_hidden_state", "pooler_output", "dense_embeddings", "image_embeddings"):
        torch.testing.assert_close(getattr(per_view, name), getattr(batched, name).detach(), atol=1e-5, rtol=0)
    for per_view_map, batched_map in zip(
        per_view.guidance_taps + per_view.decoder_guidance, batched.guidance_taps + batched.decoder_guidance
    ):
        assert per_view_map.shape == batched_map.shape
        torch.testing.assert_close(per_view_map, batched_map.detach(), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ precision, export


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_classes", [5, 13])
def test_half_precision_models_run_and_stay_close(dtype, num_classes):
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=2, num_classes=num_classes)
    with torch.no_grad():
        reference = model(pixel_values=pixel_values, input_ids=input_ids).logits
        model.to(dtype)
        logits = model(pixel_values=pixel_values, input_ids=input_ids).logits
        sliding = model(pixel_values=pixel_values.view(1, 2, *pixel_values.shape[1:]), input_ids=input_ids).logits
    assert logits.dtype == dtype and sliding.dtype == dtype
    kept = reference != -100.0
    assert torch.equal(kept, logits != -100.0)
    assert (logits.float() - reference)[kept].abs().max() < 0.25 * reference.abs().max()
    model.train()
    loss = model(pixel_values=pixel_values, input_ids=input_ids, labels=torch.randint(0, 3, (2, 16, 16))).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_from_pretrained_with_a_dtype_runs(tmp_path):
    make_model().save_pretrained(tmp_path)
    model = CATSegForSemanticSegmentation.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    pixel_values, input_ids = random_inputs(model, batch=1)
    with torch.no_grad():
        assert model(pixel_values=pixel_values, input_ids=input_ids).logits.dtype == torch.bfloat16


def test_torch_export_with_class_embeddings_matches_eager():
    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=2, num_classes=5)
    with torch.no_grad():
        embeddings = model.get_class_embeddings(input_ids)
        expected = model(pixel_values=pixel_values, class_embeddings=embeddings).logits
        exported = torch.export.export(model, args=(), kwargs={"pixel_values": pixel_values, "class_embeddings": embeddings})
        logits = exported.module()(pixel_values=pixel_values, class_embeddings=embeddings).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_torch_compile_of_the_whole_mode_forward_has_no_graph_break():
    import torch._dynamo

    model = make_model()
    pixel_values, input_ids = random_inputs(model, batch=1, num_classes=5)
    with torch.no_grad():
        embeddings = model.get_class_embeddings(input_ids)
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(pixel_values=pixel_values, class_embeddings=embeddings)
    assert explanation.graph_break_count == 0, explanation.break_reasons


# ------------------------------------------------------------------------------------ tile threads of the kernels


@pytest.fixture
def one_intra_op_thread():
    """The caller runs with one torch thread (as each tile thread does), so that threaded and inline kernels compute
    with the same products and can be compared bit for bit; the caller's count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("pooling_size", [(1, 1), (2, 2)])
def test_threaded_kernels_equal_inline_kernels_and_blocks(pooling_size, monkeypatch, one_intra_op_thread):
    """Each kernel on two tile threads with one class map / pixel / token per tile: bit-identical to the same kernel
    inline (the tiles are independent and write disjoint slices of the buffer they update in place), and equal to
    the block it stands for."""
    use_smallest_tiles(monkeypatch)
    model = make_model(window_size=2)
    layer = model.aggregator.layers[0]
    generator = torch.Generator().manual_seed(12)
    cost_embedding = torch.randn(2, 5, 4, 4, 32, generator=generator)
    appearance_guidance = torch.randn(2, 4, 4, 16, generator=generator)
    text_guidance = torch.randn(2, 5, 16, generator=generator).relu()

    with torch.no_grad():
        results = {}
        for workers in (1, 2):
            buffer = cost_embedding.clone()
            with catseg_kernels.TileWorkers(workers) as tile_workers:
                catseg_kernels.spatial_aggregation(
                    layer.spatial_aggregation, buffer, appearance_guidance, out=buffer, workers=tile_workers
                )
            results["spatial", workers] = buffer
            buffer = cost_embedding.clone()
            with catseg_kernels.TileWorkers(workers) as tile_workers:
                catseg_kernels.class_aggregation(
                    layer.class_aggregation, buffer, text_guidance, pooling_size, out=buffer, workers=tile_workers
                )
            results["class", workers] = buffer
        spatial = layer.spatial_aggregation(cost_embedding, appearance_guidance)
        classes = layer.class_aggregation(cost_embedding, text_guidance, pooling_size)
    assert torch.equal(results["spatial", 2], results["spatial", 1])
    assert torch.equal(results["class", 2], results["class", 1])
    torch.testing.assert_close(results["spatial", 2], spatial, atol=1e-5, rtol=0)
    torch.testing.assert_close(results["class", 2], classes, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_classes", [3, 13])
def test_model_on_tile_threads_equals_inline_and_autograd_paths(num_classes, monkeypatch, one_intra_op_thread):
    """The whole model (CLIP views, aggregation, decoder chunks on two tile threads, smallest tiles), under
    `torch.inference_mode` (whose tensors only accept in-place updates inside inference mode, in every thread):
    bit-identical to the kernels inline and equal to the blocks (with gradients)."""
    use_smallest_tiles(monkeypatch)
    model = make_model(window_size=2, class_chunk_size=0)
    pixel_values, input_ids = random_inputs(model, batch=3, num_classes=num_classes)
    with torch.no_grad():
        class_embeddings = model.get_class_embeddings(input_ids)
    with torch.enable_grad():
        expected = model(pixel_values=pixel_values, class_embeddings=class_embeddings).logits.detach()
    swin_block_tile, threads = catseg_kernels.swin_block_tile, set()

    def recorded(*args):
        threads.add(threading.current_thread().name)
        return swin_block_tile(*args)

    monkeypatch.setattr(catseg_kernels, "swin_block_tile", recorded)
    logits = {}
    for workers in (1, 2):
        monkeypatch.setattr(catseg_kernels, "tile_workers", lambda workers=workers: workers)
        with torch.inference_mode():
            logits[workers] = model(pixel_values=pixel_values, class_embeddings=class_embeddings).logits
    assert threading.current_thread().name in threads and any(name.startswith("catseg-tiles") for name in threads)
    assert torch.equal(logits[2], logits[1])
    # Float32 rounding of differently shaped products, on logits of magnitude ~5 (as chunked vs whole elsewhere).
    torch.testing.assert_close(logits[2], expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize(
    "workers, max_classes, sizes", [(2, 8, [6, 6]), (1, 8, [6, 6]), (1, 0, [12]), (2, 0, [6, 6]), (2, 5, [3] * 4)]
)
def test_decoder_class_chunks_fill_the_tile_threads(workers, max_classes, sizes, monkeypatch):
    """`map_class_chunks` (the decoder's chunks without gradients on CPU): at most `max_classes` classes a chunk
    (`<= 0`: no bound), sizes within one of each other, as many chunks as fill every thread; results in class order."""
    monkeypatch.setattr(catseg_kernels, "tile_workers", lambda: workers)
    logits = torch.arange(12.0).view(1, 12, 1).expand(2, 12, 3)
    chunks = catseg_kernels.map_class_chunks(lambda chunk: chunk, logits, max_classes)
    assert [chunk.shape[1] for chunk in chunks] == sizes
    torch.testing.assert_close(torch.cat(chunks, dim=1), logits, rtol=0, atol=0)


@pytest.mark.parametrize("num_views, on_threads", [(5, 4), (4, 4), (1, 0)])
def test_clip_views_left_over_run_in_the_calling_thread(num_views, on_threads, monkeypatch):
    """`inference_image_features` with two tile threads: as many views as fill both threads run on them, the view left
    over (the sliding window's fifth) in the calling thread on all its intra-op threads; outputs in view order."""
    monkeypatch.setattr(catseg_kernels, "tile_workers", lambda: 2)
    ran_in = {}

    def image_features(view: torch.Tensor) -> CATSegImageFeatures:
        ran_in[int(view[0, 0, 0, 0])] = threading.current_thread().name
        return CATSegImageFeatures(last_hidden_state=view * 2, guidance_taps=(view, view + 1))

    pixel_values = torch.arange(num_views, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    features = catseg_kernels.inference_image_features(image_features, pixel_values)
    torch.testing.assert_close(features.last_hidden_state, pixel_values * 2, rtol=0, atol=0)
    torch.testing.assert_close(features.guidance_taps[1], pixel_values + 1, rtol=0, atol=0)
    caller = threading.current_thread().name
    assert [ran_in[view] == caller for view in range(num_views)] == [False] * on_threads + [True] * (num_views - on_threads)


# ------------------------------------------------------------------------------------------------ training views on threads


def _training_gradients(model, threads, num_classes=5, pad_len=None, checkpointing=None):
    torch.manual_seed(3)
    pixel_values, input_ids = random_inputs(model, batch=3, num_classes=num_classes)
    labels = torch.randint(0, num_classes, (3, 20, 20))
    labels[0, :4] = 255
    model.train()
    if checkpointing is not None:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    model.zero_grad(set_to_none=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        outputs = model(pixel_values=pixel_values, input_ids=input_ids, labels=labels)
        outputs.loss.backward()
    finally:
        torch.set_num_threads(previous)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return outputs, grads


@pytest.mark.parametrize("num_classes, pad_len", [(5, None), (7, 4)])
def test_training_views_on_threads_give_the_plain_loss_and_gradients(num_classes, pad_len, monkeypatch):
    # With more than one torch thread, a training forward runs the aggregator's views on tile threads (forward and
    # backward); one thread is the plain loop. Same loss, same logits, same gradient for every parameter.
    overrides = {"class_chunk_size": 2} if pad_len is None else {"class_chunk_size": 2, "pad_len": pad_len}
    model = make_model(**overrides)
    assert catseg_kernels.use_view_threads(torch.zeros(1), 3) == (torch.get_num_threads() > 1)
    calls = []
    views_on_threads = modeling_catseg.views_on_threads
    monkeypatch.setattr(modeling_catseg, "views_on_threads", lambda *args: calls.append(1) or views_on_threads(*args))
    plain_outputs, plain = _training_gradients(model, threads=1, num_classes=num_classes)
    assert not calls
    threaded_outputs, threaded = _training_gradients(model, threads=2, num_classes=num_classes)
    assert calls == [1]
    torch.testing.assert_close(threaded_outputs.loss, plain_outputs.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(threaded_outputs.logits, plain_outputs.logits, atol=1e-5, rtol=0)
    if pad_len is not None:
        assert torch.equal(threaded_outputs.selected_classes, plain_outputs.selected_classes)
    assert threaded.keys() == plain.keys() and any(name.startswith("aggregator.") for name in plain)
    assert any(name.startswith("clip.") for name in plain)
    for name in plain:
        torch.testing.assert_close(threaded[name], plain[name], atol=1e-6, rtol=1e-4, msg=name)


def test_training_views_on_threads_accumulate_each_parameter_gradient_once():
    # Hooks on the parameters' gradient accumulation (as DistributedDataParallel's) fire once per parameter and step.
    model = make_model(class_chunk_size=2)
    counts = {}
    handles = [
        p.register_post_accumulate_grad_hook(lambda p, name=name: counts.__setitem__(name, counts.get(name, 0) + 1))
        for name, p in model.named_parameters() if name.startswith("aggregator.")
    ]
    try:
        _training_gradients(model, threads=2)
    finally:
        for handle in handles:
            handle.remove()
    assert counts and set(counts.values()) == {1}


def test_views_on_threads_raise_a_views_error_and_match_the_loop():
    weight = torch.randn(4, 4, requires_grad=True)
    views = [(torch.randn(3, 4, requires_grad=True),) for _ in range(3)]

    def function(x):
        return ((x @ weight).tanh(),)

    with torch.enable_grad():
        previous = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            outputs = catseg_kernels.views_on_threads(function, views, [weight])
            sum(o[0].sum() for o in outputs).backward()
            threaded = [weight.grad.clone()] + [v[0].grad.clone() for v in views]

            def failing(x):
                raise RuntimeError("view failed")

            with pytest.raises(RuntimeError, match="view failed"):
                catseg_kernels.views_on_threads(failing, views, [weight])
        finally:
            torch.set_num_threads(previous)
    for tensor in (weight, *(v[0] for v in views)):
        tensor.grad = None
    sum(function(v[0])[0].sum() for v in views).backward()
    for ours, expected in zip(threaded, [weight.grad] + [v[0].grad for v in views]):
        torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_training_keeps_the_plain_view_loop_and_checkpoints_the_decoder(use_reentrant, monkeypatch):
    model = make_model(class_chunk_size=2)
    plain_outputs, plain = _training_gradients(model, threads=1)
    calls = []
    monkeypatch.setattr(modeling_catseg, "views_on_threads", lambda *args: calls.append(1))
    checkpointed = []
    original = model.aggregator.decode
    outputs, grads = None, None

    def counting_decode(*args, **kwargs):
        checkpoint = model.aggregator._gradient_checkpointing_func
        model.aggregator._gradient_checkpointing_func = lambda *a, **k: checkpointed.append(1) or checkpoint(*a, **k)
        try:
            return original(*args, **kwargs)
        finally:
            model.aggregator._gradient_checkpointing_func = checkpoint

    monkeypatch.setattr(model.aggregator, "decode", counting_decode)
    outputs, grads = _training_gradients(model, threads=2, checkpointing={"use_reentrant": use_reentrant})
    assert not calls and checkpointed and model.aggregator.gradient_checkpointing
    torch.testing.assert_close(outputs.loss, plain_outputs.loss, atol=1e-6, rtol=1e-6)
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], atol=1e-6, rtol=1e-4, msg=name)
