"""CPU kernels of CAT-Seg: the blocks of `modeling_catseg`, reformulated for inference speed, and the training
forward's views on threads.

`modeling_catseg` writes every block as the paper's computation, and that is what training (autograd) and
accelerators run. Without gradients on CPU ([`use_inference_kernels`], asked by the aggregator and by
`get_image_features`) the model calls this module's entry points instead: [`inference_aggregation`] and
[`inference_image_features`]. Each computes the same function as the blocks it stands for, from those blocks' own
parameters; results differ only by the float32 rounding of differently shaped products. One CPU choice holds with
gradients too, as it bounds memory as well as time: the decoder's chunk of classes ([`decoder_classes_per_chunk`]).
`tests/test_modeling.py` checks them against the blocks and against a straightforward reference, with the tile sizes
below and with one class map / pixel / token per tile. Why tiles pay on CPU: `docs/performance-notes.md`.

What is reformulated, against the blocks:

- **Tiles.** The Swin blocks run over tiles of a few class maps of one image, the class aggregation over tiles of
  pixels (all classes of those pixels), the residual MLPs over tiles of tokens, the decoder over tiles of a few
  classes, the CLIP vision tower one view at a time: only along axes where nothing interacts.
- **In place.** The aggregation layers write every tile's output back into the cost-embedding buffer (only the
  aggregator holds it).
- **Windows by one gather.** A class map is put in (shifted-)window order by one `index_select` of precomputed token
  positions (the cyclic shift and the window partition at once), and back by the inverse permutation.
- **Fused projections.** The token halves of query, key and value are one matrix product (in the class aggregation:
  query and key, so that `elu + 1` acts on one block); their guidance halves and biases are one precomputed term per
  image (Swin windows) or per class (class aggregation).
- **Class attention pixel-major.** Tiles (pixel, class, channel): per head, the sums over classes and the queries'
  products are batched products over pixels, read in place; the normaliser is one more key-value column.
- **Cheaper feature map.** `elu + 1` is `max(x, 0) + exp(min(x, 0))` (elu's `expm1` is the slower function).
- **Fused products.** On CPU in float32 the residual MLPs' products and the window attention's output projection
  run through oneDNN with bias, activation (exact GELU, ReLU) and residual applied in the product's output pass.

**Tile threads.** With more than one torch thread, each entry point runs its independent tiles (Swin tiles, pixel
tiles of the class aggregation, decoder class chunks, CLIP views) on a pool of as many Python threads as the caller
has torch threads, each with one intra-op thread, which take the next tile as soon as they finish one
([`TileWorkers`], in `tile_threads_catseg`); the caller's own thread count and thread state are left as they were.
Tiles along an axis have sizes that differ by at most one, and as many of them as fill every thread
([`tile_slices`]), so that no thread waits for another's last, larger tile; CLIP views left over after full rounds of
the threads (a sliding window's fifth) run in the calling thread on all its intra-op threads. Many short OpenMP
parallel regions, every op split statically across the threads, would make every op wait for the slowest thread,
which on a shared machine is the one whose core is busy with other work (and its partner busy-waits meanwhile); see
`docs/performance-notes.md`. The tiles write disjoint slices of their outputs, and each reads only its own slice of a
buffer it updates, so the order in which they run does not matter.

**Training views on threads.** With gradients on CPU and more than one torch thread, the aggregator's views (the
images of a training batch) run on the same tile threads, in the forward and in the backward ([`views_on_threads`]):
each view's graph is recorded and differentiated in its thread, and the parameters' gradients are summed over the
views and handed to the caller's backward, which accumulates each parameter's gradient once. The model takes this
path in one place (`CATSegForSemanticSegmentation.aggregate`, [`use_view_threads`]), not with checkpointed layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .tile_threads_catseg import TileWorkers, tile_slices, tile_workers

if TYPE_CHECKING:
    from timm.layers import Mlp

    from .modeling_catseg import (
        CATSegAggregationLayer,
        CATSegClassAggregation,
        CATSegImageFeatures,
        CATSegLinearAttention,
        CATSegSpatialAggregation,
        CATSegSwinBlock,
    )

# Tile sizes, in tokens (a class at a pixel) or output pixels. Tests shrink them to 1 to exercise every tile boundary.
# Tokens per tile of the residual MLPs: one Swin tile's tokens in one piece.
MLP_TOKENS_PER_TILE = 8 * 24 * 24
# Class-map tokens (classes x H x W) per tile of the Swin blocks: 8 classes at 24x24.
SWIN_TOKENS_PER_TILE = 8 * 24 * 24
# Class tokens (classes x pixels) per tile of the class aggregation.
CLASS_AGGREGATION_TOKENS_PER_TILE = 8192
# Output pixels (classes x 4H x 4W) per tile of the upsampling decoder: 8 classes at 96x96.
DECODER_OUTPUT_PIXELS_PER_TILE = 8 * 96 * 96

_Result = TypeVar("_Result")


def use_inference_kernels(tensor: torch.Tensor) -> bool:
    """Whether the model runs this module's kernels on `tensor`: only without gradients (they record no autograd
    graph and overwrite their buffers) and only on CPU (the tiles are sized for CPU caches; accelerators run the
    blocks as written)."""
    return not torch.is_grad_enabled() and tensor.device.type == "cpu"


# ----------------------------------------------------------------------------------------------------------------------
# Tile threads
# ----------------------------------------------------------------------------------------------------------------------


def map_class_chunks(
    function: Callable[[torch.Tensor], _Result], tensor: torch.Tensor, max_classes: int
) -> list[_Result]:
    """`function` on the class chunks (dim 1) of `tensor` `(B, T, ...)`, on `tile_workers()` threads: chunks of at
    most `max_classes` classes (`<= 0`: no bound), cut by [`tile_slices`] into as many as fill every thread."""
    num_classes = tensor.shape[1]
    with TileWorkers(tile_workers()) as workers:
        size = num_classes if max_classes <= 0 else max_classes
        chunks = tile_slices(size, num_classes, workers.workers, min_tiles_per_worker=1)
        return workers.map(lambda classes: function(tensor[:, classes]), chunks)


# ----------------------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------------------


def fused_guided_projection(
    query: nn.Linear, key: nn.Linear, value: nn.Linear | None, guidance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For attention whose queries and keys act on `[token ; guidance]` and whose values act on the token: the token
    halves of the query, key and value weights stacked `(3 * dim, dim)` for one matrix product, and what does not
    depend on the token (guidance halves of query and key, the three biases) as terms `(..., 3 * dim)` of `guidance`
    `(..., G)`. Without `value`, the query and key parts alone: `(2 * dim, dim)` and `(..., 2 * dim)`."""
    dim = query.in_features - guidance.shape[-1]
    query_term = F.linear(guidance, query.weight[:, dim:], query.bias)
    key_term = F.linear(guidance, key.weight[:, dim:], key.bias)
    if value is None:
        return torch.cat([query.weight[:, :dim], key.weight[:, :dim]]), torch.cat([query_term, key_term], dim=-1)
    terms = torch.cat([query_term, key_term, value.bias.expand_as(query_term)], dim=-1)
    weight = torch.cat([query.weight[:, :dim], key.weight[:, :dim], value.weight])
    return weight, terms


def _has_onednn_linear() -> bool:
    """Whether this torch build has oneDNN's linear with fused pointwise operations (x86 builds do)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


# Asked once: the answer is a property of the installed torch build.
HAS_ONEDNN_LINEAR = _has_onednn_linear()


def _onednn_products(tokens: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether products of `tokens` and `weight` run as oneDNN linear layers with fused pointwise operations: float32
    CPU tensors, no autocast, not while compiling (the compiler fuses on its own)."""
    cpu_float32 = tokens.device.type == "cpu" and tokens.dtype == torch.float32 == weight.dtype
    plain = not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
    return HAS_ONEDNN_LINEAR and cpu_float32 and plain


def _onednn_activation(mlp: Mlp, tokens: torch.Tensor) -> tuple[str, str] | None:
    """oneDNN's name and algorithm for the activation of `mlp` where its products run through oneDNN with the bias
    and the activation applied in the product's output pass (an exact GELU or a ReLU, identity norm); else None."""
    if not (isinstance(mlp.norm, nn.Identity) and _onednn_products(tokens, mlp.fc1.weight)):
        return None
    if isinstance(mlp.act, nn.ReLU):
        return "relu", ""
    if isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none":
        return "gelu", "none"
    return None


def linear_plus(linear: nn.Linear, tokens: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`residual + linear(tokens)` for `(N, C)` tensors; through oneDNN the addition happens in the product's output
    pass (no separate pass over the result, no copy of the bias into every row as `addmm` makes)."""
    if not _onednn_products(tokens, linear.weight):
        return residual + linear(tokens)
    return torch.ops.mkldnn._linear_pointwise.binary(tokens, residual.contiguous(), linear.weight, linear.bias, "add")


def _residual_mlp_tile(mlp: Mlp, tokens: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`residual + mlp(tokens)` with timm's `Mlp` as CAT-Seg builds it (dropouts of 0, identity norm) on `(N, C)`;
    through oneDNN with bias, activation and residual fused ([`_onednn_activation`], [`linear_plus`]): no separate
    pass over the 4x wider intermediate or the output. Elsewhere `mlp` as written."""
    activation = _onednn_activation(mlp, tokens)
    if activation is not None:
        fc1 = torch.ops.mkldnn._linear_pointwise(tokens, mlp.fc1.weight, mlp.fc1.bias, activation[0], [], activation[1])
        return linear_plus(mlp.fc2, fc1, residual)
    return residual + mlp(tokens)


def residual_mlp(hidden: torch.Tensor, norm: nn.Module, mlp: Mlp) -> torch.Tensor:
    """`hidden + mlp(norm(hidden))` over the last dimension, in tiles of `MLP_TOKENS_PER_TILE` tokens."""
    tokens = hidden.reshape(-1, hidden.shape[-1])
    if tokens.shape[0] <= MLP_TOKENS_PER_TILE:
        return _residual_mlp_tile(mlp, norm(tokens), tokens).view(hidden.shape)
    output = torch.empty_like(tokens)
    for start in range(0, tokens.shape[0], MLP_TOKENS_PER_TILE):
        tile = tokens[start : start + MLP_TOKENS_PER_TILE]
        output[start : start + MLP_TOKENS_PER_TILE] = _residual_mlp_tile(mlp, norm(tile), tile)
    return output.view(hidden.shape)


# ----------------------------------------------------------------------------------------------------------------------
# Spatial aggregation (CATSegSpatialAggregation, CATSegSwinBlock, CATSegWindowAttention)
# ----------------------------------------------------------------------------------------------------------------------


class SwinTilePlan(NamedTuple):
    """What the tiles of one Swin block share, for one batch of images."""

    window_order: torch.Tensor  # raster index of the token at each position of the (shifted) windows, window by window
    raster_order: torch.Tensor  # its inverse: window-order position of each raster token
    weight: torch.Tensor  # token halves of query, key and value (3 * dim, dim)
    terms: torch.Tensor  # per image, guidance halves and biases in window order (B, H * W, 3 * dim)
    window_tokens: int
    attention_bias: torch.Tensor | None  # shifted-window mask repeated for the largest tile (maps * windows, 1, t, t)


def swin_tile_plan(block: CATSegSwinBlock, guidance: torch.Tensor, max_maps: int) -> SwinTilePlan:
    """The plan of `block` for normalised guidance `(B, H, W, G)` and tiles of at most `max_maps` class maps."""
    batch, height, width, _ = guidance.shape
    window_size, _ = block.window_geometry(height, width)
    raster = torch.arange(height * width, device=guidance.device).view(1, height, width, 1)
    order = block.partition(raster).flatten()
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    attention = block.attention
    weight, terms = fused_guided_projection(
        attention.query, attention.key, attention.value, guidance.reshape(batch, height * width, -1)[:, order]
    )
    mask = block.attention_mask(height, width, guidance.device)
    attention_bias = None if mask is None else mask.to(guidance.dtype).unsqueeze(1).repeat(max_maps, 1, 1, 1)
    return SwinTilePlan(order, inverse, weight, terms, window_size * window_size, attention_bias)


def swin_block_tile(block: CATSegSwinBlock, maps: torch.Tensor, plan: SwinTilePlan, image: int) -> torch.Tensor:
    """`block` on class maps `(n, H * W, C)` of image `image` of the plan, in raster order; same layout out."""
    num_maps, num_tokens, channels = maps.shape
    attention = block.attention
    tokens = maps.index_select(1, plan.window_order)
    attention_bias = plan.attention_bias
    if attention_bias is not None:
        attention_bias = attention_bias[: num_maps * (num_tokens // plan.window_tokens)]
    qkv = F.linear(block.norm1(tokens), plan.weight).add_(plan.terms[image])
    qkv = qkv.view(-1, plan.window_tokens, 3, attention.num_heads, attention.head_dim)
    query, key, value = (part.transpose(1, 2) for part in qkv.unbind(2))
    attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias, scale=attention.scale)
    attended = attended.transpose(1, 2).reshape(num_maps * num_tokens, channels)
    attended = linear_plus(attention.proj, attended, tokens.view(-1, channels))
    tokens = residual_mlp(attended.view(num_maps, num_tokens, channels), block.norm2, block.mlp)
    return tokens.index_select(1, plan.raster_order)


def spatial_aggregation(
    module: CATSegSpatialAggregation,
    cost_embedding: torch.Tensor,
    appearance_guidance: torch.Tensor,
    out: torch.Tensor,
    workers: TileWorkers | None = None,
) -> torch.Tensor:
    """`module` on `cost_embedding` `(B, T, H, W, C)` with `appearance_guidance` `(B, H, W, G)`, in tiles of a few
    class maps of one image (on the threads of `workers`, if given), written into `out` (same shape; may be
    `cost_embedding` itself: a tile reads and writes only its own class maps)."""
    batch, num_classes, height, width, channels = cost_embedding.shape
    guidance = module.guidance_norm(appearance_guidance)
    maps_per_tile = num_classes if module.class_chunk_size <= 0 else module.class_chunk_size
    maps_per_tile = min(maps_per_tile, max(1, SWIN_TOKENS_PER_TILE // (height * width)), num_classes)
    class_tiles = tile_slices(maps_per_tile, num_classes, workers.workers if workers else 1, other_tiles=batch)
    largest_tile = class_tiles[0].stop - class_tiles[0].start  # tile_slices puts the larger tiles first
    plans = [swin_tile_plan(block, guidance, largest_tile) for block in module.blocks]
    inputs = cost_embedding.reshape(batch, num_classes, height * width, channels)
    outputs = out.view(batch, num_classes, height * width, channels)

    def run_tile(tile: tuple[int, slice]) -> None:
        image, classes = tile
        maps = inputs[image, classes]
        for block, plan in zip(module.blocks, plans):
            maps = swin_block_tile(block, maps, plan, image)
        outputs[image, classes] = maps

    tiles = [(image, classes) for image in range(batch) for classes in class_tiles]
    (workers or TileWorkers(1)).map(run_tile, tiles)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Class aggregation (CATSegClassAggregation, CATSegLinearAttention)
# ----------------------------------------------------------------------------------------------------------------------


def linear_attention_tile(
    attention: CATSegLinearAttention,
    normed: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    terms: torch.Tensor,
    padding: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """`residual + attention(normed)` for pixel-major normalised tokens `(p, T, dim)` of one image and `residual` of
    that shape, with `weight` `(2 * dim, dim)` and that image's `terms` `(T, 2 * dim)` from `fused_guided_projection`
    without the value. Each head's keys, values and queries at a pixel are one strided matrix over the classes,
    read in place by batched products over the pixels."""
    num_pixels, num_classes, dim = normed.shape
    heads, head_dim = attention.num_heads, dim // attention.num_heads
    query_key = F.linear(normed, weight).add_(terms)
    query_key = query_key.clamp_min(0).add_(query_key.clamp_max_(0).exp_())  # elu + 1
    value = F.linear(normed, attention.value.weight, attention.value.bias).unflatten(-1, (heads, head_dim))
    query, key = (part.unflatten(-1, (heads, head_dim)) for part in query_key.split(dim, dim=-1))  # (p, T, h, hd)
    key_value = value.new_empty(heads, num_pixels, head_dim, head_dim)
    for head in range(heads):
        torch.bmm(key[..., head, :].transpose(1, 2), value[..., head, :], out=key_value[head])
    key_sum = key.sum(dim=1).transpose(0, 1)  # (heads, p, head_dim)
    if padding is not None:
        key_value += padding[0].unsqueeze(1)
        key_sum = key_sum + padding[1].unsqueeze(1)
    key_value = torch.cat([key_value, key_sum.unsqueeze(-1)], dim=-1)  # (heads, p, head_dim, head_dim + 1)
    attended = value.new_empty(heads, num_pixels, num_classes, head_dim + 1)
    for head in range(heads):
        torch.bmm(query[..., head, :], key_value[head], out=attended[head])
    normaliser = attended[..., head_dim:].add_(attention.eps)
    # The result takes the memory order of its first operand, the residual's (p, T, heads, head_dim).
    by_head = residual.unflatten(-1, (heads, head_dim)).permute(2, 0, 1, 3)
    output = torch.addcdiv(by_head, attended[..., :head_dim], normaliser)
    return output.permute(1, 2, 0, 3).reshape(residual.shape)


def _class_layer_tiles(
    module: CATSegClassAggregation,
    tokens: torch.Tensor,
    text_guidance: torch.Tensor,
    outputs: torch.Tensor,
    add_input: bool,
    workers: TileWorkers | None = None,
) -> None:
    """The transformer layer of `module` across the classes of `tokens` `(B, T, P, C)` (text guidance `(B, T, G)`),
    over tiles of pixels (on the threads of `workers`, if given), written into `outputs` (same shape; may be `tokens`
    itself: a tile reads and writes only its own pixels), plus the input if `add_input`."""
    batch, num_classes, num_pixels, _ = tokens.shape
    pixels_per_tile = max(1, CLASS_AGGREGATION_TOKENS_PER_TILE // num_classes)
    pixel_tiles = tile_slices(pixels_per_tile, num_pixels, workers.workers if workers else 1, other_tiles=batch)
    padding = module.padding_contribution(module.pad_len - num_classes)
    attention = module.attention
    weight, terms = fused_guided_projection(attention.query, attention.key, None, text_guidance)  # terms per class

    def run_tile(tile_slice: tuple[int, slice]) -> None:
        image, pixels = tile_slice
        tile = tokens[image, :, pixels].transpose(0, 1).contiguous()  # (p, T, C), pixel-major
        attended = linear_attention_tile(attention, module.norm1(tile), tile, weight, terms[image], padding)
        hidden = residual_mlp(attended, module.norm2, module.mlp)
        outputs[image, :, pixels] = (hidden.add_(tile) if add_input else hidden).transpose(0, 1)

    tiles = [(image, pixels) for image in range(batch) for pixels in pixel_tiles]
    (workers or TileWorkers(1)).map(run_tile, tiles)


def class_aggregation(
    module: CATSegClassAggregation,
    cost_embedding: torch.Tensor,
    text_guidance: torch.Tensor,
    pooling_size: tuple[int, int],
    out: torch.Tensor,
    workers: TileWorkers | None = None,
) -> torch.Tensor:
    """`module` on `cost_embedding` `(B, T, H, W, C)` with `text_guidance` `(B, T, G)`, in tiles of pixels (on the
    threads of `workers`, if given), written into `out` (same shape; may be `cost_embedding` itself)."""
    batch, num_classes, height, width, channels = cost_embedding.shape
    if tuple(pooling_size) == (1, 1):
        tokens = cost_embedding.view(batch, num_classes, height * width, channels)
        _class_layer_tiles(module, tokens, text_guidance, out.view(tokens.shape), add_input=True, workers=workers)
        return out
    pooled = module.pool(cost_embedding, pooling_size)
    tokens = pooled.reshape(batch, num_classes, -1, channels)
    aggregated = torch.empty(tokens.shape, dtype=tokens.dtype, device=tokens.device)
    _class_layer_tiles(module, tokens, text_guidance, aggregated, add_input=False, workers=workers)
    return torch.add(cost_embedding, module.unpool(aggregated.view(pooled.shape), (height, width)), out=out)


# ----------------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------------


def inference_aggregation(
    layers: Iterable[CATSegAggregationLayer],
    cost_embedding: torch.Tensor,
    appearance_guidance: torch.Tensor,
    text_guidance: torch.Tensor,
    pooling_size: tuple[int, int],
) -> torch.Tensor:
    """The aggregation layers on `cost_embedding` `(B, T, H, W, C)`, updated in place (the caller must own it), their
    tiles on `tile_workers()` threads."""
    with TileWorkers(tile_workers()) as workers:
        for layer in layers:
            spatial = layer.spatial_aggregation
            spatial_aggregation(spatial, cost_embedding, appearance_guidance, out=cost_embedding, workers=workers)
            classes = layer.class_aggregation
            class_aggregation(classes, cost_embedding, text_guidance, pooling_size, out=cost_embedding, workers=workers)
    return cost_embedding


def decoder_classes_per_chunk(cost_embedding: torch.Tensor, class_chunk_size: int) -> int:
    """How many classes of `cost_embedding` `(B, T, H, W, C)` the upsampling decoder takes at once: on CPU, tiles of
    `DECODER_OUTPUT_PIXELS_PER_TILE` output pixels (at most `class_chunk_size` classes), with or without gradients,
    as the workspaces of CPU convolutions grow with the chunk; elsewhere `class_chunk_size` (`<= 0`: all)."""
    if cost_embedding.device.type != "cpu":
        return class_chunk_size
    batch, _, height, width = cost_embedding.shape[:4]
    classes_per_tile = max(1, DECODER_OUTPUT_PIXELS_PER_TILE // (batch * 16 * height * width))
    return classes_per_tile if class_chunk_size <= 0 else min(classes_per_tile, class_chunk_size)


def inference_image_features(
    image_features: Callable[[torch.Tensor], CATSegImageFeatures], pixel_values: torch.Tensor
) -> CATSegImageFeatures:
    """`image_features` (the plain image side) one view of `pixel_values` `(N, 3, R, R)` at a time, the outputs
    concatenated in dim 0. The views on `tile_workers()` threads, as many as fill every thread; the views left over
    (`N` modulo the threads) then run in the calling thread on all its intra-op threads, instead of one thread
    working through a last view while the others wait."""
    views = [pixel_values[index : index + 1] for index in range(pixel_values.shape[0])]
    with TileWorkers(tile_workers()) as workers:
        on_threads = len(views) - len(views) % workers.workers
        per_view = workers.map(image_features, views[:on_threads])
    per_view += [image_features(view) for view in views[on_threads:]]
    merged = {}
    for name, first in per_view[0].items():
        parts = [features[name] for features in per_view]
        merged[name] = tuple(map(torch.cat, zip(*parts))) if isinstance(first, tuple) else torch.cat(parts)
    return type(per_view[0])(**merged)


# ----------------------------------------------------------------------------------------------------------------------
# Training: independent views on the tile threads, forward and backward
# ----------------------------------------------------------------------------------------------------------------------


def use_view_threads(tensor: torch.Tensor, num_views: int) -> bool:
    """Whether the model runs the aggregator's views on tile threads with gradients ([`views_on_threads`]): on CPU,
    with more than one view and more than one tile thread."""
    return torch.is_grad_enabled() and tensor.device.type == "cpu" and num_views > 1 and tile_workers() > 1


class _ViewsOnThreads(torch.autograd.Function):
    """`function` on each view's tensors, the views on tile threads in the forward and in the backward.

    Every view's graph is recorded in its thread (on detached copies of the view's inputs, with the real parameters
    as leaves) and differentiated in its thread by `torch.autograd.grad`, which returns the parameters' gradients
    instead of accumulating them; they are summed over the views and returned for the parameters, which are inputs
    of this function, so the caller's backward accumulates each parameter's gradient once (as hooks, e.g.
    DistributedDataParallel's, expect)."""

    @staticmethod
    def forward(ctx, plan, *tensors):
        function, num_parameters, num_views = plan
        parameters, view_tensors = tensors[:num_parameters], tensors[num_parameters:]
        per_view = len(view_tensors) // num_views
        inputs = [
            [t.detach().requires_grad_(t.requires_grad) for t in view_tensors[i * per_view : (i + 1) * per_view]]
            for i in range(num_views)
        ]

        def record(view_inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
            with torch.enable_grad():
                return tuple(function(*view_inputs))

        with TileWorkers(tile_workers()) as workers:
            outputs = workers.map(record, inputs)
        ctx.parameters, ctx.inputs, ctx.outputs = parameters, inputs, outputs
        results = tuple(output.detach() for view_outputs in outputs for output in view_outputs)
        ctx.mark_non_differentiable(*(r for r in results if not r.is_floating_point()))
        ctx.outputs_per_view = len(outputs[0])
        return results

    @staticmethod
    def backward(ctx, *grads):
        parameters, inputs, outputs = ctx.parameters, ctx.inputs, ctx.outputs
        trainable = [p for p in parameters if p.requires_grad]
        per_view = ctx.outputs_per_view

        def differentiate(view: int) -> tuple[torch.Tensor | None, ...]:
            pairs = [
                (output, grad)
                for output, grad in zip(outputs[view], grads[view * per_view : (view + 1) * per_view])
                if output.requires_grad and grad is not None
            ]
            sources = [t for t in inputs[view] if t.requires_grad] + trainable
            if not pairs:
                return (None,) * len(sources)
            return torch.autograd.grad(
                [output for output, _ in pairs], sources, [grad for _, grad in pairs], allow_unused=True
            )

        with TileWorkers(tile_workers()) as workers:
            per_view_grads = workers.map(differentiate, range(len(inputs)))
        ctx.outputs = ctx.inputs = None  # the views' graphs are no longer needed

        # Each view's gradients: those of its inputs that require them, then those of the trainable parameters.
        input_grads, trainable_grads = [], [None] * len(trainable)
        for view_inputs, view_grads in zip(inputs, per_view_grads):
            own = iter(view_grads[: len(view_grads) - len(trainable)])
            input_grads += [next(own) if t.requires_grad else None for t in view_inputs]
            for index, grad in enumerate(view_grads[len(view_grads) - len(trainable) :]):
                if grad is not None:
                    trainable_grads[index] = grad if trainable_grads[index] is None else trainable_grads[index] + grad
        summed = iter(trainable_grads)
        parameter_grads = [next(summed) if p.requires_grad else None for p in parameters]
        return (None, *parameter_grads, *input_grads)


def views_on_threads(
    function: Callable[..., Sequence[torch.Tensor]],
    views: Sequence[Sequence[torch.Tensor]],
    parameters: Sequence[torch.Tensor],
) -> list[tuple[torch.Tensor, ...]]:
    """`[tuple(function(*view)) for view in views]` with gradients, the views on `tile_workers()` threads in the
    forward and in the backward. `parameters` must hold every tensor that requires gradients which `function` uses
    besides its arguments (a module's parameters); each view must give the same number of tensors and `function` the
    same number of outputs. Integer outputs are not differentiable. No double backward."""
    flat = [tensor for view in views for tensor in view]
    results = _ViewsOnThreads.apply((function, len(parameters), len(views)), *parameters, *flat)
    per_view = len(results) // len(views)
    return [tuple(results[i * per_view : (i + 1) * per_view]) for i in range(len(views))]
