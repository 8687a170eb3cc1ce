"""PyTorch CAT-Seg: cost aggregation on CLIP for open-vocabulary semantic segmentation (Cho et al., CVPR 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.swin_transformer import window_partition, window_reverse
from torch import nn
from transformers import CLIPModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .catseg_kernels import (
    decoder_classes_per_chunk,
    inference_aggregation,
    inference_image_features,
    map_class_chunks,
    use_inference_kernels,
    use_view_threads,
    views_on_threads,
)
from .configuration_catseg import CATSegConfig

# Value the reference gives to classes dropped by the top-k class selection; sigmoid(-100) is exactly 0 in float32.
DROPPED_CLASS_LOGIT = -100.0
# Additive attention bias between tokens of different regions in a shifted Swin window. The reference (the Swin
# convention) adds -100: after softmax's max subtraction those weights are at most exp(-100 + gap), which vanish next
# to the row's largest weight (1) in float32 unless a cross-region logit exceeds every in-region one by more than ~80,
# so -inf gives the same attention. -100 would also leave denormal weights (~1e-44), which make the CPU attention
# backward about 5x slower.
SHIFTED_WINDOW_MASK_VALUE = float("-inf")


@dataclass
class CATSegImageFeatures(BaseModelOutputWithPooling):
    """
    Image-side features of CAT-Seg, as returned by [`CATSegForSemanticSegmentation.get_image_features`]: a
    `BaseModelOutputWithPooling` (as CLIP's `get_image_features`) with CAT-Seg's dense fields.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + h * w, width)`):
            Output of the last CLIP vision block, run in CAT-Seg's dense mode (class token first), before the
            post-LayerNorm: the vision tower's last hidden state, as in CLIP's `get_image_features`.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            The class token of `dense_embeddings` (post-LayerNorm and visual projection of the class token of
            `last_hidden_state`, as in CLIP's `get_image_features`).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The input embeddings and the outputs of the standard CLIP vision blocks (all but the last, which runs in
            dense mode and gives `last_hidden_state`), each `(batch_size, 1 + h * w, width)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Attention weights of those blocks, each `(batch_size, num_heads, 1 + h * w, 1 + h * w)` (eager attention
            only, as in CLIP).
        dense_embeddings (`torch.FloatTensor` of shape `(batch_size, 1 + h * w, projection_dim)`):
            Dense CLIP embeddings (class token first): the post-LayerNorm and the visual projection applied to every
            token of `last_hidden_state`.
        image_embeddings (`torch.FloatTensor` of shape `(batch_size, projection_dim, h, w)`):
            `dense_embeddings` without the class token, as a feature map: the appearance guidance and the cost
            volume's image side.
        guidance_taps (`tuple(torch.FloatTensor)`):
            Outputs of the CLIP vision blocks named by `config.guidance_layer_indices`, each `(batch_size, 1 + h*w, width)`.
        decoder_guidance (`tuple(torch.FloatTensor)`):
            The taps without class token, upsampled by the transposed convolutions: `(batch_size, 256, 2h, 2w)` and
            `(batch_size, 128, 4h, 4w)` for the released models.
    """

    dense_embeddings: torch.FloatTensor | None = None
    image_embeddings: torch.FloatTensor | None = None
    guidance_taps: tuple[torch.FloatTensor, ...] | None = None
    decoder_guidance: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CATSegSemanticSegmenterOutput(ModelOutput):
    """
    Output of [`CATSegForSemanticSegmentation`].

    `N` is the number of images, `V` the number of views of a sliding-window image (its tiles and the global view,
    last), `T` the number of classes, `P` the number of prompt templates and `h, w` the CLIP patch grid.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            Binary cross-entropy between the logits (resized to the label size) and one-hot labels over all classes.
        logits (`torch.FloatTensor` of shape `(N, T, 4h, 4w)` for whole images or `(N, V, T, 4h, 4w)` for sliding-window views):
            Per-class segmentation logits (96x96 for the released models). With more classes than `config.pad_len`,
            the classes not kept by the top-k selection have logit exactly -100 in that view.
        class_embeddings (`torch.FloatTensor` of shape `(T, P, C)`, *optional*):
            The L2-normalised class text embeddings that were used (returned with `output_intermediates=True`; they
            are per vocabulary, not per image, so they are not part of the default output, whose dim 0 is the image).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            Hidden states of the CLIP vision tower (see [`CATSegImageFeatures`]), one row per view (`N * V` rows for
            sliding-window inputs).
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Attention weights of the CLIP vision tower (eager attention), one row per view.
        cost_volume (`torch.FloatTensor` of shape `(N, [V,] P, T, h, w)`, *optional*):
            Cosine similarities between dense image embeddings and class embeddings, over all classes (returned with
            `output_intermediates=True`).
        image_features ([`CATSegImageFeatures`], *optional*):
            Image-side intermediates, one row per view (returned with `output_intermediates=True`).
        selected_classes (`torch.LongTensor` of shape `(N, [V,] pad_len)`, *optional*):
            Ids of the classes each view aggregated, when there were more than `config.pad_len` classes.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    class_embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cost_volume: torch.FloatTensor | None = None
    image_features: CATSegImageFeatures | None = None
    selected_classes: torch.LongTensor | None = None


# The name of this output before `CATSegForSemanticSegmentation`; kept for code written against it.
CATSegOutput = CATSegSemanticSegmenterOutput


# ----------------------------------------------------------------------------------------------------------------------
# Layout: inside the aggregator the cost embedding is kept channels-last, (B, T, H, W, C), so that the per-class
# spatial blocks see (B*T, H, W, C) and the per-pixel class attention sees (B, T, H*W, C) without copies.
#
# Every block below is the paper's computation. Without gradients on CPU the aggregator and `get_image_features` run
# the same computation through `catseg_kernels` instead (tiles, in place; see that module), chosen in one place:
# `use_inference_kernels`.
# ----------------------------------------------------------------------------------------------------------------------


def _class_chunks(tensor: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, ...]:
    """`tensor` `(B, T, ...)` cut into views of `chunk_size` classes (dim 1); `chunk_size <= 0` means one chunk."""
    # `split`, not slicing: its backward concatenates the chunks' gradients once, where every slice's backward would
    # allocate (and zero) a gradient of the whole tensor.
    if chunk_size <= 0 or chunk_size >= tensor.shape[1]:
        return (tensor,)
    return tensor.split(chunk_size, dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# Spatial aggregation: Swin blocks over the cost embedding of each class, guided by the dense image embeddings
# ----------------------------------------------------------------------------------------------------------------------


def shifted_window_attention_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device
) -> torch.Tensor:
    """Additive mask `(num_windows, window_size**2, window_size**2)` that keeps a shifted window's attention inside
    the regions that were contiguous before the cyclic shift."""
    region_ids = torch.zeros((1, height, width, 1), device=device)
    bounds = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    region = 0
    for rows in bounds:
        for cols in bounds:
            region_ids[:, rows, cols, :] = region
            region += 1
    windows = window_partition(region_ids, (window_size, window_size)).reshape(-1, window_size * window_size)
    different_region = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros(different_region.shape, device=device).masked_fill(different_region, SHIFTED_WINDOW_MASK_VALUE)


class CATSegWindowAttention(nn.Module):
    """Window self-attention whose queries and keys also see the appearance guidance; values are the tokens alone.

    `query`/`key` act on `[token ; guidance]`, as the checkpoints store them.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.query = nn.Linear(dim + guidance_dim, dim)
        self.key = nn.Linear(dim + guidance_dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, windows: torch.Tensor, guidance_windows: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """
        Args:
            windows: `(B, T, num_windows, t, dim)`, the normalised tokens of the T class maps of each image, cut into
                windows of t tokens.
            guidance_windows: `(B, num_windows, t, G)`, the image's guidance cut into the same windows.
            attention_mask: `(num_windows, t, t)` additive mask of shifted windows, or None.

        Returns:
            The projected attention output, `(B, T, num_windows, t, dim)`.
        """
        batch, num_classes, num_windows, tokens, _ = windows.shape
        # W [x ; g] + b = W_x x + W_g g + b: the guidance half is the same for the T class maps of an image, so it is
        # computed once per image and broadcast over the classes.
        query_guidance = F.linear(guidance_windows, self.query.weight[:, self.dim :]).unsqueeze(1)
        key_guidance = F.linear(guidance_windows, self.key.weight[:, self.dim :]).unsqueeze(1)
        query = F.linear(windows, self.query.weight[:, : self.dim], self.query.bias) + query_guidance
        key = F.linear(windows, self.key.weight[:, : self.dim], self.key.bias) + key_guidance
        value = self.value(windows)
        heads = (-1, tokens, self.num_heads, self.head_dim)  # (B * T * num_windows, t, heads, head_dim)
        if attention_mask is not None:
            attention_mask = attention_mask.to(query.dtype).repeat(batch * num_classes, 1, 1).unsqueeze(1)
        attended = F.scaled_dot_product_attention(
            query.view(heads).transpose(1, 2),
            key.view(heads).transpose(1, 2),
            value.view(heads).transpose(1, 2),
            attn_mask=attention_mask,
            scale=self.scale,
        )
        return self.proj(attended.transpose(1, 2).reshape(windows.shape))


class CATSegSwinBlock(nn.Module):
    """A pre-norm Swin block (no relative position bias) whose attention is guided by the appearance features."""

    def __init__(self, config: CATSegConfig, shifted: bool):
        super().__init__()
        dim = config.hidden_dim
        self.window_size = config.window_size
        self.shift_size = config.window_size // 2 if shifted else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CATSegWindowAttention(dim, config.appearance_guidance_proj_dim, config.num_attention_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), act_layer=nn.GELU)

    def window_geometry(self, height: int, width: int) -> tuple[int, int]:
        """`(window_size, shift_size)` on an `height x width` grid."""
        # As in Swin: a window as large as the grid covers it whole and is never shifted.
        if min(height, width) <= self.window_size:
            window_size, shift_size = min(height, width), 0
        else:
            window_size, shift_size = self.window_size, self.shift_size
        if height % window_size or width % window_size:
            raise ValueError(
                f"The {height}x{width} feature grid cannot be split into {window_size}x{window_size} windows; use a "
                f"clip_resolution whose patch grid is a multiple of config.window_size={self.window_size}."
            )
        return window_size, shift_size

    def partition(self, tensor: torch.Tensor) -> torch.Tensor:
        """`(N, H, W, C)` -> windows `(N, num_windows, window_size**2, C)`, after the cyclic shift of shifted
        windows."""
        window_size, shift_size = self.window_geometry(*tensor.shape[1:3])
        if shift_size:
            tensor = torch.roll(tensor, shifts=(-shift_size, -shift_size), dims=(1, 2))
        windows = window_partition(tensor, (window_size, window_size))
        return windows.view(tensor.shape[0], -1, window_size * window_size, tensor.shape[-1])

    def reverse(self, windows: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Inverse of `partition`: `(N, num_windows, window_size**2, C)` -> `(N, H, W, C)`."""
        window_size, shift_size = self.window_geometry(height, width)
        windows = windows.reshape(-1, window_size, window_size, windows.shape[-1])
        merged = window_reverse(windows, (window_size, window_size), height, width)
        if shift_size:
            merged = torch.roll(merged, shifts=(shift_size, shift_size), dims=(1, 2))
        return merged

    def attention_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor | None:
        """The shifted-window mask `(num_windows, t, t)` on an `height x width` grid; None for plain windows."""
        window_size, shift_size = self.window_geometry(height, width)
        if not shift_size:
            return None
        return shifted_window_attention_mask(height, width, window_size, shift_size, device)

    def forward(self, hidden: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """`hidden` `(B, T, H, W, C)`: the cost embedding; `guidance` `(B, H, W, G)`: the normalised appearance
        guidance. Returns `(B, T, H, W, C)`."""
        batch, num_classes, height, width, channels = hidden.shape
        windows = self.partition(self.norm1(hidden).view(-1, height, width, channels))
        attended = self.attention(
            windows.view(batch, num_classes, *windows.shape[1:]),
            self.partition(guidance),
            self.attention_mask(height, width, hidden.device),
        )
        hidden = hidden + self.reverse(attended.flatten(0, 1), height, width).view(hidden.shape)
        return hidden + self.mlp(self.norm2(hidden))


class CATSegSpatialAggregation(nn.Module):
    """Two Swin blocks (plain, then shifted) applied to every class slice of the cost embedding independently."""

    def __init__(self, config: CATSegConfig):
        super().__init__()
        self.class_chunk_size = config.class_chunk_size
        self.guidance_norm = nn.LayerNorm(config.appearance_guidance_proj_dim)
        self.blocks = nn.ModuleList([CATSegSwinBlock(config, shifted=False), CATSegSwinBlock(config, shifted=True)])

    def forward(self, cost_embedding: torch.Tensor, appearance_guidance: torch.Tensor) -> torch.Tensor:
        """`cost_embedding` `(B, T, H, W, C)`, `appearance_guidance` `(B, H, W, G)` -> `(B, T, H, W, C)`."""
        guidance = self.guidance_norm(appearance_guidance)
        chunks = []
        # Classes never interact here: chunks of `config.class_chunk_size` classes bound the memory of the attention
        # and MLP intermediates.
        for hidden in _class_chunks(cost_embedding, self.class_chunk_size):
            for block in self.blocks:
                hidden = block(hidden, guidance)
            chunks.append(hidden)
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# Class aggregation: linear attention across classes at every pixel, guided by the text embeddings
# ----------------------------------------------------------------------------------------------------------------------


class CATSegLinearAttention(nn.Module):
    """Multi-head linear attention ("Transformers are RNNs", elu + 1 feature map) without output projection.

    There is no positional information, so the result is invariant to the order of the classes. `query`/`key` act
    on `[token ; text guidance]`, as the checkpoints store them.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, eps: float):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.eps = eps
        self.query = nn.Linear(dim + guidance_dim, dim)
        self.key = nn.Linear(dim + guidance_dim, dim)
        self.value = nn.Linear(dim, dim)

    def project(self, tokens: torch.Tensor, guidance: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Feature-mapped queries and keys and the values, each `(..., heads, head_dim)`.

        `tokens` `(..., T, P, dim)` with guidance `(..., T, G)` shared by the P pixels, or `tokens` `(dim,)` with
        guidance `(G,)` for a single vector."""
        # W [x ; g] + b = W_x x + W_g g + b: the guidance half is the same at every pixel, so it is computed once per
        # class and broadcast over the pixels.
        query_guidance = F.linear(guidance, self.query.weight[:, self.dim :])
        key_guidance = F.linear(guidance, self.key.weight[:, self.dim :])
        if tokens.dim() > 1:
            query_guidance, key_guidance = query_guidance.unsqueeze(-2), key_guidance.unsqueeze(-2)
        split = (*tokens.shape[:-1], self.num_heads, -1)
        query = F.linear(tokens, self.query.weight[:, : self.dim], self.query.bias) + query_guidance
        key = F.linear(tokens, self.key.weight[:, : self.dim], self.key.bias) + key_guidance
        query = F.elu(query).add_(1.0).view(split)
        key = F.elu(key).add_(1.0).view(split)
        return query, key, self.value(tokens).view(split)

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        padding: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Feature-mapped `query`/`key` and `value` `(B, T, P, heads, head_dim)` -> attended `(B, T, P, dim)`:
        `q_t · (sum_s k_s v_s^T) / (q_t · sum_s k_s + eps)` over the classes s at each pixel.

        `padding`: `(key_value (heads, head_dim, head_dim), key_sum (heads, head_dim))`, the summed contributions of
        further keys/values that are the same at every pixel (the class padding), added exactly."""
        key_value = torch.einsum("btphd,btphe->bphde", key, value)
        key_sum = key.sum(dim=1)
        if padding is not None:
            key_value = key_value + padding[0]
            key_sum = key_sum + padding[1]
        normaliser = torch.einsum("btphd,bphd->btph", query, key_sum).add_(self.eps)
        attended = torch.einsum("btphd,bphde->btphe", query, key_value) / normaliser.unsqueeze(-1)
        return attended.flatten(-2)

    def forward(
        self, tokens: torch.Tensor, guidance: torch.Tensor, padding: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Attends over the classes of `tokens` `(B, T, P, dim)` separately at each of the P pixels; `guidance` is
        `(B, T, G)`, `padding` as in `attend`."""
        query, key, value = self.project(tokens, guidance)
        return self.attend(query, key, value, padding)


class CATSegClassAggregation(nn.Module):
    """Pre-norm transformer layer across the class axis, on an average-pooled grid.

    The class sequence always has `config.pad_len` entries, as in the reference: missing classes are filled with one
    learned padding token (and one learned padding guidance vector), whose outputs are discarded. Because padding
    tokens are identical at every pixel and linear attention only sums keys and values, their contribution is
    computed once and added exactly, so the cost follows the real class count.
    """

    def __init__(self, config: CATSegConfig):
        super().__init__()
        dim = config.hidden_dim
        self.pad_len = config.pad_len
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CATSegLinearAttention(
            dim, config.text_guidance_proj_dim, config.num_attention_heads, config.linear_attention_eps
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), act_layer=nn.ReLU)
        self.padding_token = nn.Parameter(torch.zeros(dim))
        self.padding_guidance = nn.Parameter(torch.zeros(config.text_guidance_proj_dim))

    def padding_contribution(self, num_padding: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Summed key-value outer products `(heads, head_dim, head_dim)` and key sums `(heads, head_dim)` of
        `num_padding` identical padding tokens; None without padding."""
        if num_padding <= 0:
            return None
        _, key, value = self.attention.project(self.norm1(self.padding_token), self.padding_guidance)
        return torch.einsum("hd,he->hde", key, value) * num_padding, key * num_padding

    @staticmethod
    def pool(cost_embedding: torch.Tensor, pooling_size: tuple[int, int]) -> torch.Tensor:
        """Average pooling of `(B, T, H, W, C)` over the grid -> `(B, T, H / ph, W / pw, C)`."""
        if tuple(pooling_size) == (1, 1):
            return cost_embedding
        batch, num_classes, height, width, channels = cost_embedding.shape
        pooled = cost_embedding.permute(0, 1, 4, 2, 3).reshape(batch * num_classes, channels, height, width)
        pooled = F.avg_pool2d(pooled, pooling_size)
        return pooled.view(batch, num_classes, channels, *pooled.shape[-2:]).permute(0, 1, 3, 4, 2)

    @staticmethod
    def unpool(aggregated: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bilinear resize (corners aligned, as in the reference) of `(B, T, h, w, C)` -> `(B, T, *size, C)`."""
        batch, num_classes, height, width, channels = aggregated.shape
        if (height, width) == tuple(size):
            return aggregated
        aggregated = aggregated.permute(0, 1, 4, 2, 3).reshape(batch * num_classes, channels, height, width)
        aggregated = F.interpolate(aggregated, size=tuple(size), mode="bilinear", align_corners=True)
        return aggregated.view(batch, num_classes, channels, *size).permute(0, 1, 3, 4, 2)

    def forward(
        self, cost_embedding: torch.Tensor, text_guidance: torch.Tensor, pooling_size: tuple[int, int]
    ) -> torch.Tensor:
        """`cost_embedding` `(B, T, H, W, C)`, `text_guidance` `(B, T, G)` -> `(B, T, H, W, C)`."""
        batch, num_classes, height, width, channels = cost_embedding.shape
        pooled = self.pool(cost_embedding, pooling_size)
        tokens = pooled.reshape(batch, num_classes, -1, channels)  # (B, T, P, C): a class sequence at every pixel
        padding = self.padding_contribution(self.pad_len - num_classes)
        tokens = tokens + self.attention(self.norm1(tokens), text_guidance, padding)
        tokens = tokens + self.mlp(self.norm2(tokens))
        # The layer's output is added to its input once more, at full resolution, as in the reference.
        return cost_embedding + self.unpool(tokens.view(pooled.shape), (height, width))


class CATSegAggregationLayer(GradientCheckpointingLayer):
    """One cost-aggregation layer: spatial aggregation, then class aggregation."""

    def __init__(self, config: CATSegConfig):
        super().__init__()
        self.spatial_aggregation = CATSegSpatialAggregation(config)
        self.class_aggregation = CATSegClassAggregation(config)

    def forward(
        self,
        cost_embedding: torch.Tensor,
        appearance_guidance: torch.Tensor,
        text_guidance: torch.Tensor,
        pooling_size: tuple[int, int],
    ) -> torch.Tensor:
        """`cost_embedding` `(B, T, H, W, C)`, `appearance_guidance` `(B, H, W, G)`, `text_guidance` `(B, T, G)`."""
        cost_embedding = self.spatial_aggregation(cost_embedding, appearance_guidance)
        return self.class_aggregation(cost_embedding, text_guidance, pooling_size)


# ----------------------------------------------------------------------------------------------------------------------
# Upsampling decoder
# ----------------------------------------------------------------------------------------------------------------------


class CATSegUpsampleStage(nn.Module):
    """x2 transposed convolution, concatenation with the (projected) CLIP guidance, two conv-GroupNorm-ReLU.

    The first convolution of the concatenation is computed as the sum of its feature part (per class) and its
    guidance part (`guidance_term`, once per image), which is the same linear map without repeating the guidance for
    every class.
    """

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int):
        super().__init__()
        self.feature_channels = in_channels - guidance_channels
        self.upsample = nn.ConvTranspose2d(in_channels, self.feature_channels, kernel_size=2, stride=2)
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(out_channels // 16, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(out_channels // 16, out_channels),
            nn.ReLU(inplace=True),
        )

    def guidance_term(self, guidance: torch.Tensor) -> torch.Tensor:
        """The guidance part of the first convolution, channels last: `(B, 1, 2H, 2W, out)`, from guidance
        `(B, G, 2H, 2W)`."""
        term = F.conv2d(guidance, self.convs[0].weight[:, self.feature_channels :], padding=1)
        return term.permute(0, 2, 3, 1).contiguous().unsqueeze(1)

    def forward(self, features: torch.Tensor, guidance_term: torch.Tensor) -> torch.Tensor:
        """`features` `(B, T, C, H, W)` -> `(B, T, out, 2H, 2W)`."""
        # The stage runs in channels-last memory layout, the cost embedding's own, where the convolutions with these
        # few channels are fastest on CPU (docs/performance-notes.md).
        batch, num_classes = features.shape[:2]
        upsampled = self.upsample(features.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        hidden = F.conv2d(upsampled, self.convs[0].weight[:, : self.feature_channels], padding=1)
        # The guidance term is added over (B, T, 2H, 2W, out) views, the memory order: the gradient of the term (a
        # sum over the classes) is then a fast reduction over contiguous memory.
        hidden = hidden.permute(0, 2, 3, 1).unflatten(0, (batch, num_classes)) + guidance_term
        hidden = self.convs[1:](hidden.flatten(0, 1).permute(0, 3, 1, 2))
        return hidden.view(batch, num_classes, *hidden.shape[1:])


# ----------------------------------------------------------------------------------------------------------------------
# The aggregator
# ----------------------------------------------------------------------------------------------------------------------


def compute_cost_volume(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity `(B, P, T, H, W)` between dense image embeddings `(B, C, H, W)` and class embeddings
    `(B, T, P, C)`; both sides are L2-normalised here.

    Always computed in float32, also under autocast: the costs are small numbers whose differences decide the
    segmentation, and this step is a negligible part of the work."""
    with torch.autocast(image_embeddings.device.type, enabled=False):
        image_embeddings = F.normalize(image_embeddings.float(), dim=1)
        class_embeddings = F.normalize(class_embeddings.float(), dim=-1)
        return torch.einsum("bchw,btpc->bpthw", image_embeddings, class_embeddings)


class CATSegAggregator(nn.Module):
    """Cost embedding, guidance projections, aggregation layers and the upsampling decoder of CAT-Seg."""

    def __init__(self, config: CATSegConfig):
        super().__init__()
        self.config = config
        kernel = config.cost_embedding_kernel_size
        self.cost_embedding = nn.Conv2d(
            config.num_prompt_templates, config.hidden_dim, kernel_size=kernel, padding=kernel // 2
        )
        self.appearance_guidance_projection = nn.Sequential(
            nn.Conv2d(config.projection_dim, config.appearance_guidance_proj_dim, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.text_guidance_projection = nn.Sequential(
            nn.Linear(config.projection_dim, config.text_guidance_proj_dim), nn.ReLU()
        )
        self.decoder_guidance_projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1), nn.ReLU())
            for in_dim, out_dim in zip(config.decoder_guidance_dims, config.decoder_guidance_proj_dims)
        )
        self.layers = nn.ModuleList(CATSegAggregationLayer(config) for _ in range(config.num_aggregation_layers))
        stage_inputs = [config.hidden_dim, *config.decoder_dims[:-1]]
        self.decoder_stages = nn.ModuleList(
            CATSegUpsampleStage(in_dim, out_dim, guidance_dim)
            for in_dim, out_dim, guidance_dim in zip(
                stage_inputs, config.decoder_dims, config.decoder_guidance_proj_dims
            )
        )
        self.head = nn.Conv2d(config.decoder_dims[-1], 1, kernel_size=3, padding=1)
        # Set by `gradient_checkpointing_enable()` (with the aggregation layers): the decoder's class chunks are
        # then checkpointed too, as their activations (every class at 4x the grid) dominate what remains.
        self.gradient_checkpointing = False

    def select_classes(self, cost_volume: torch.Tensor) -> torch.Tensor:
        """Per view, the ids (ascending) of the `pad_len` classes whose highest cost over templates and pixels is the
        largest."""
        highest_cost = cost_volume.amax(dim=(1, 3, 4))
        selected = highest_cost.topk(self.config.pad_len, dim=-1).indices
        return selected.sort(dim=-1).values

    def decode(
        self,
        cost_embedding: torch.Tensor,
        decoder_guidance: list[torch.Tensor],
        classes_per_chunk: int | None = None,
    ) -> torch.Tensor:
        """Upsampling decoder and head, per class: `(B, T, H, W, C)` -> `(B, T, 4H, 4W)` logits.

        Classes never interact here: they go through in chunks of `classes_per_chunk` classes (`<= 0`: all at once),
        which bounds memory; by default `config.class_chunk_size`, less on CPU (`decoder_classes_per_chunk`)."""
        if classes_per_chunk is None:
            classes_per_chunk = decoder_classes_per_chunk(cost_embedding, self.config.class_chunk_size)
        stages = zip(self.decoder_stages, self.decoder_guidance_projections, decoder_guidance)
        guidance_terms = [stage.guidance_term(projection(guidance)) for stage, projection, guidance in stages]
        batch = cost_embedding.shape[0]

        def decode_chunk(chunk: torch.Tensor, *guidance_terms: torch.Tensor) -> torch.Tensor:
            features = chunk.permute(0, 1, 4, 2, 3)
            for stage, guidance_term in zip(self.decoder_stages, guidance_terms):
                features = stage(features, guidance_term)
            chunk_logits = self.head(features.flatten(0, 1))
            return chunk_logits.view(batch, features.shape[1], *features.shape[-2:])

        if use_inference_kernels(cost_embedding):
            # The chunks on the inference kernels' tile threads, cut so that the threads finish together.
            logits = map_class_chunks(
                lambda chunk: decode_chunk(chunk, *guidance_terms), cost_embedding, classes_per_chunk
            )
        else:
            chunks = _class_chunks(cost_embedding, classes_per_chunk)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                logits = [self._gradient_checkpointing_func(decode_chunk, chunk, *guidance_terms) for chunk in chunks]
            else:
                logits = [decode_chunk(chunk, *guidance_terms) for chunk in chunks]
        return logits[0] if len(logits) == 1 else torch.cat(logits, dim=1)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        class_embeddings: torch.Tensor,
        decoder_guidance: tuple[torch.Tensor, torch.Tensor],
        pooling_size: tuple[int, int],
        cost_volume: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            image_embeddings: `(B, C, H, W)` dense CLIP embeddings.
            class_embeddings: `(B, T, P, C)` class text embeddings.
            decoder_guidance: the two upsampled CLIP guidance maps.
            pooling_size: spatial pooling before the class aggregation.
            cost_volume: `(B, P, T, H, W)`, computed here when not given.

        Returns:
            `(logits (B, T, 4H, 4W), selected_classes (B, pad_len) or None)`.
        """
        if cost_volume is None:
            cost_volume = compute_cost_volume(image_embeddings, class_embeddings)
        batch, _, num_classes, height, width = cost_volume.shape
        selected = None
        if num_classes > self.config.pad_len:
            selected = self.select_classes(cost_volume)
            cost_volume = cost_volume.gather(
                2, selected[:, None, :, None, None].expand(-1, cost_volume.shape[1], -1, height, width)
            )
            class_embeddings = class_embeddings.gather(
                1, selected[:, :, None, None].expand(-1, -1, *class_embeddings.shape[2:])
            )
        kept = cost_volume.shape[2]

        # Each class slice (P templates as channels) is embedded by the same convolution. The cost volume is float32
        # (see compute_cost_volume); a model cast to half precision continues in its own dtype from here.
        cost_slices = cost_volume.transpose(1, 2).reshape(batch * kept, -1, height, width)
        cost_embedding = self.cost_embedding(cost_slices.to(self.cost_embedding.weight.dtype))
        cost_embedding = cost_embedding.view(batch, kept, -1, height, width).permute(0, 1, 3, 4, 2).contiguous()

        appearance_guidance = self.appearance_guidance_projection(image_embeddings).permute(0, 2, 3, 1)
        text_guidance = F.normalize(class_embeddings, dim=-1).mean(dim=2)
        text_guidance = self.text_guidance_projection(text_guidance / text_guidance.norm(dim=-1, keepdim=True))

        if use_inference_kernels(cost_embedding):
            # The same layers as tiles that update `cost_embedding` in place (only this method holds it).
            cost_embedding = inference_aggregation(
                self.layers, cost_embedding, appearance_guidance, text_guidance, pooling_size
            )
        else:
            for layer in self.layers:
                cost_embedding = layer(cost_embedding, appearance_guidance, text_guidance, pooling_size)
        logits = self.decode(cost_embedding, list(decoder_guidance))

        if selected is not None:
            full = logits.new_full((batch, num_classes, *logits.shape[-2:]), DROPPED_CLASS_LOGIT)
            logits = full.scatter(1, selected[:, :, None, None].expand_as(logits), logits)
        return logits, selected


class CATSegPreTrainedModel(PreTrainedModel):
    config: CATSegConfig
    config_class = CATSegConfig
    base_model_prefix = "catseg"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPTextEmbeddings", "CLIPVisionEmbeddings", "CATSegAggregationLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    # What `output_hidden_states` / `output_attentions` return: those of the CLIP vision blocks, captured by
    # transformers' own output recording (the CLIP towers are CLIP's modules).
    _can_record_outputs = {"hidden_states": CLIPEncoderLayer, "attentions": CLIPAttention}
    # The loss is the mean over the pixels and classes of each batch (as in the reference); with gradient
    # accumulation the Trainer averages the micro-batches' losses.
    accepts_loss_kwargs = False

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        # `attn_implementation` selects the attention of the CLIP towers, which are CLIP's modules (built on
        # transformers' AttentionInterface). CAT-Seg's window attention and linear class attention are part of the
        # algorithm, not interchangeable kernels, and transformers' source heuristic would wrongly refuse the switch.
        return True

    def _init_weights(self, module: nn.Module) -> None:
        # CLIP's own submodules are initialised by CLIPModel's `_init_weights` (transformers dispatches per sub-model).
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, CATSegClassAggregation):
            init.zeros_(module.padding_token)
            init.zeros_(module.padding_guidance)


# Both Auto classes are written into saved folders, so that a folder loads through either with
# `trust_remote_code=True` where catseg_hf is not installed.
_AUTO_MAP = {
    "AutoModel": "modeling_catseg.CATSegModel",
    "AutoModelForSemanticSegmentation": "modeling_catseg.CATSegForSemanticSegmentation",
}


class CATSegForSemanticSegmentation(CATSegPreTrainedModel):
    """
    CAT-Seg: open-vocabulary semantic segmentation by cost aggregation on CLIP.

    Give it CLIP views of the images (see [`CATSegProcessor`]) and either tokenised class names (`input_ids` of shape
    `(T, P, L)`) or precomputed `class_embeddings` `(T, P, C)` (from [`~CATSegForSemanticSegmentation.get_class_embeddings`]);
    it returns per-class logits at 4x the CLIP patch grid for every image.

    The pipeline of the paper: dense CLIP image embeddings ([`~CATSegForSemanticSegmentation.get_image_features`]) and
    class text embeddings -> cost volume (cosine similarities) -> spatial and class aggregation -> upsampling decoder.
    """

    # Saved folders carry the modelling code and an `auto_map`, so they load with `trust_remote_code=True` anywhere.
    _auto_class = "AutoModelForSemanticSegmentation"

    def __init__(self, config: CATSegConfig):
        super().__init__(config)
        self.clip = CLIPModel._from_config(config.clip_config)
        width = config.vision_width
        first_dim, second_dim = config.decoder_guidance_dims
        self.guidance_upsamplers = nn.ModuleList(
            [
                nn.ConvTranspose2d(width, first_dim, kernel_size=2, stride=2),
                nn.ConvTranspose2d(width, second_dim, kernel_size=4, stride=4),
            ]
        )
        self.aggregator = CATSegAggregator(config)
        config.auto_map = {**_AUTO_MAP, **(getattr(config, "auto_map", None) or {})}
        # The text embeddings of the default vocabulary (if the config has one), with the text-tower state they were
        # computed from.
        self._default_class_embeddings: tuple[tuple, torch.Tensor] | None = None
        self.post_init()
        for name, parameter in self.named_parameters():
            if name in self.parameters_without_gradient:
                parameter.requires_grad_(False)

    def initialize_weights(self) -> None:
        # transformers counts a model defined outside its package as custom code, and then takes a module whose own
        # parameters are all initialised as initialised, which a module without parameters of its own vacuously is.
        # CLIP's attention and MLP blocks, which initialise their child projections, would be skipped, so that CLIP
        # weights missing from a checkpoint (or built on the meta device) got the generic init instead of CLIP's. The
        # CLIP model is transformers' own: it initialises itself first, and what it initialised is skipped below. Both
        # only touch weights that are not initialised (loaded) yet, so a fresh model's weights do not change.
        self.clip.initialize_weights()
        # CLIP sets its logit scale in its constructor only (CAT-Seg never uses it); a missing one would stay unset.
        with torch.no_grad():
            init.constant_(self.clip.logit_scale, self.config.clip_config.logit_scale_init_value)
        super().initialize_weights()

    @property
    def parameters_without_gradient(self) -> tuple[str, ...]:
        """Names of CLIP parameters CAT-Seg never uses, so that they can never receive a gradient: CLIP's logit scale
        and the query/key projections of the last vision block (which runs in dense mode). They are never trainable
        (distributed training without `find_unused_parameters` needs that)."""
        last = f"clip.vision_model.encoder.layers.{self.config.clip_config.vision_config.num_hidden_layers - 1}.self_attn"
        return (
            "clip.logit_scale",
            f"{last}.q_proj.weight",
            f"{last}.q_proj.bias",
            f"{last}.k_proj.weight",
            f"{last}.k_proj.bias",
        )

    # ------------------------------------------------------------------------------------------------ text side
    def get_class_embeddings(
        self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor | None = None
    ) -> torch.FloatTensor:
        """
        L2-normalised class text embeddings: CLIP's projected text features of every prompt, read at its end-of-text
        token.

        Args:
            input_ids (`torch.LongTensor` of shape `(T, P, L)`):
                Token ids of every class (T) in every template (P); `(T, L)` is read as one template.
            attention_mask (`torch.LongTensor`, *optional*):
                Same shape. Padding after the end-of-text token does not change the result (the text tower is
                causal and is read at the end-of-text position).

        Returns:
            `torch.FloatTensor` of shape `(T, P, C)`.
        """
        if input_ids.dim() == 2:
            input_ids = input_ids.unsqueeze(1)
            attention_mask = attention_mask.unsqueeze(1) if attention_mask is not None else None
        if input_ids.dim() != 3:
            raise ValueError(f"input_ids must be (num_classes, num_templates, length), got shape {tuple(input_ids.shape)}.")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}; give "
                "the mask the processor returned with these ids."
            )
        num_classes, num_templates, length = input_ids.shape
        if input_ids.numel() == 0:
            raise ValueError(
                f"input_ids of shape {tuple(input_ids.shape)} hold no prompt: give at least one class name (and one "
                "template)."
            )
        if input_ids.is_floating_point():
            raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
        vocab_size = self.config.clip_config.text_config.vocab_size
        out_of_vocabulary = (input_ids < 0) | (input_ids >= vocab_size)
        if bool(out_of_vocabulary.any()):
            bad = torch.unique(input_ids[out_of_vocabulary])[:5].tolist()
            raise ValueError(
                f"input_ids hold token id(s) {bad} outside CLIP's vocabulary of {vocab_size} tokens; tokenise the "
                "class names with this model's CATSegProcessor."
            )
        flat_ids = input_ids.reshape(-1, length)
        flat_mask = attention_mask.reshape(-1, length) if attention_mask is not None else None
        step = max(self.config.text_batch_size, 1)
        embeddings = torch.cat(
            [
                self._encode_prompts(
                    flat_ids[start : start + step], flat_mask[start : start + step] if flat_mask is not None else None
                )
                for start in range(0, flat_ids.shape[0], step)
            ]
        )
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        return embeddings.view(num_classes, num_templates, -1)

    def _encode_prompts(self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor | None) -> torch.Tensor:
        """Projected text-tower features at the end-of-text token of each prompt."""
        # The text tower is causal and is read at the end-of-text token: positions after the last one of the batch
        # cannot change the result, so they are not computed (a prompt is ~10 tokens of the 77).
        length = int(self._end_of_text_positions(input_ids).max()) + 1
        input_ids = input_ids[:, :length]
        if attention_mask is not None:
            attention_mask = attention_mask[:, :length]
        return self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def _end_of_text_positions(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        eos_token_id = self.config.clip_config.text_config.eos_token_id
        if eos_token_id is None or eos_token_id == 2:
            # Legacy CLIP configs: the end-of-text token is the largest id of the sequence.
            return input_ids.argmax(dim=-1)
        is_eos = input_ids == eos_token_id
        if not bool(is_eos.any(dim=-1).all()):
            raise ValueError(f"Every prompt must contain the end-of-text token {eos_token_id}; tokenise with CATSegProcessor.")
        return is_eos.int().argmax(dim=-1)

    def _text_weights_version(self) -> tuple:
        # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter.
        return tuple(
            (id(p), p._version, p.dtype, p.device)
            for p in (*self.clip.text_model.parameters(), self.clip.text_projection.weight)
        )

    def default_class_embeddings(self) -> torch.FloatTensor:
        """The class embeddings of the default vocabulary stored in the config (see
        `catseg_hf.pipelines.set_default_vocabulary`), used when a call names no classes; computed once per state of
        the text tower (recomputed under tracing, where nothing is kept)."""
        if self.config.default_class_input_ids is None:
            raise ValueError(
                "Give the class names as `input_ids` (from CATSegProcessor) or as `class_embeddings`, or store a "
                "default vocabulary in the config (catseg_hf.pipelines.set_default_vocabulary)."
            )
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        keep = not tracing and not (self.training and torch.is_grad_enabled())
        if keep and self._default_class_embeddings is not None:
            version, embeddings = self._default_class_embeddings
            if version == self._text_weights_version():
                return embeddings
        input_ids = torch.tensor(self.config.default_class_input_ids, dtype=torch.long, device=self.device)
        attention_mask = None
        if self.config.default_class_attention_mask is not None:
            attention_mask = torch.tensor(self.config.default_class_attention_mask, dtype=torch.long, device=self.device)
        embeddings = self.get_class_embeddings(input_ids, attention_mask)
        if keep:
            self._default_class_embeddings = (self._text_weights_version(), embeddings.detach())
        return embeddings

    # ------------------------------------------------------------------------------------------------ image side
    @capture_outputs(tie_last_hidden_states=False)
    def get_image_features(
        self, pixel_values: torch.FloatTensor, **kwargs: Unpack[TransformersKwargs]
    ) -> CATSegImageFeatures:
        r"""
        Dense CLIP image embeddings and the decoder guidance of CLIP views `(batch_size, 3, R, R)`.

        The first blocks are CLIP's own vision blocks; the last one runs in CAT-Seg's dense mode: its LayerNorm-ed
        input goes through the value and output projections only (no mixing between tokens), the class token's input
        to the block is added to every token, then the block's MLP residual; post-LayerNorm and the visual projection
        then apply to all tokens.

        Returns:
            [`CATSegImageFeatures`] (a `BaseModelOutputWithPooling`); `hidden_states` / `attentions` of the standard
            CLIP vision blocks with `output_hidden_states=True` / `output_attentions=True`.
        """
        if pixel_values.dim() != 4:
            raise ValueError(f"get_image_features takes CLIP views (batch, 3, R, R), got shape {tuple(pixel_values.shape)}.")
        capturing = any(
            kwargs.get(f"output_{name}", getattr(self.config, f"output_{name}", False))
            for name in ("hidden_states", "attentions")
        )
        # Captured hidden states and attentions are recorded per call, so they need the whole batch in one call.
        if pixel_values.shape[0] > 1 and not capturing and use_inference_kernels(pixel_values):
            return inference_image_features(self._image_features, pixel_values)
        return self._image_features(pixel_values)

    def _image_features(self, pixel_values: torch.FloatTensor) -> CATSegImageFeatures:
        vision = self.clip.vision_model
        batch, _, height, width = pixel_values.shape
        patch = self.config.clip_config.vision_config.patch_size
        grid_height, grid_width = height // patch, width // patch
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values, interpolate_pos_encoding=True))
        block_outputs = []
        *blocks, last_block = vision.encoder.layers
        for block in blocks:
            hidden = block(hidden, None)
            block_outputs.append(hidden)
        # Taps in block order, a block named twice giving two taps, as the reference's forward hooks collect them.
        taps = [block_outputs[index] for index in sorted(self.config.guidance_layer_indices)]
        last_hidden = last_block.self_attn.out_proj(last_block.self_attn.v_proj(last_block.layer_norm1(hidden)))
        last_hidden = last_hidden + hidden[:, :1]
        last_hidden = last_hidden + last_block.mlp(last_block.layer_norm2(last_hidden))
        dense = self.clip.visual_projection(vision.post_layernorm(last_hidden))
        image_embeddings = dense[:, 1:].transpose(1, 2).reshape(batch, -1, grid_height, grid_width)
        decoder_guidance = tuple(
            upsample(tap[:, 1:].transpose(1, 2).reshape(batch, -1, grid_height, grid_width))
            for upsample, tap in zip(self.guidance_upsamplers, taps)
        )
        return CATSegImageFeatures(
            last_hidden_state=last_hidden,
            pooler_output=dense[:, 0],
            dense_embeddings=dense,
            image_embeddings=image_embeddings,
            guidance_taps=tuple(taps),
            decoder_guidance=decoder_guidance,
        )

    def aggregate(
        self, image_features: CATSegImageFeatures, class_embeddings: torch.Tensor, cost_volume: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The aggregator over all views, view by view when `config.class_chunk_size` asks for bounded memory (views
        are independent: each keeps its own top-k classes)."""
        step = 1 if self.config.class_chunk_size > 0 else cost_volume.shape[0]
        pieces = (image_features.image_embeddings, class_embeddings, *image_features.decoder_guidance, cost_volume)
        views = list(zip(*(piece.split(step) for piece in pieces)))

        def aggregate_views(image_embeddings, class_embeddings, *guidance_and_cost):
            *decoder_guidance, cost_volume = guidance_and_cost
            view_logits, view_selected = self.aggregator(
                image_embeddings, class_embeddings, decoder_guidance, self.pooling_size, cost_volume=cost_volume
            )
            return (view_logits,) if view_selected is None else (view_logits, view_selected)

        # Checkpointed layers keep the plain loop: a reentrant checkpoint would accumulate parameter gradients itself.
        checkpointing = any(layer.gradient_checkpointing for layer in self.aggregator.layers)
        if use_view_threads(cost_volume, len(views)) and not checkpointing:
            # The views on the tile threads, in the forward and in the backward (catseg_kernels.views_on_threads).
            trainable = [p for p in self.aggregator.parameters() if p.requires_grad]
            outputs = views_on_threads(aggregate_views, views, trainable)
        else:
            outputs = [aggregate_views(*view) for view in views]
        logits = [view_outputs[0] for view_outputs in outputs]
        selected = [view_outputs[1] if len(view_outputs) > 1 else None for view_outputs in outputs]
        if len(logits) == 1:
            return logits[0], selected[0]
        return torch.cat(logits), (torch.cat(selected) if selected[0] is not None else None)

    # ------------------------------------------------------------------------------------------------ loss
    def compute_loss(self, logits: torch.Tensor, labels: torch.LongTensor) -> torch.Tensor:
        """Binary cross-entropy between logits bilinearly resized to the label size and one-hot labels, mean over
        all pixels and classes, in float32. As in the reference, ignored pixels (`config.ignore_index`, whatever the
        number of classes, and any id outside [0, T)) are not excluded: they count with an all-zero target."""
        if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels must be (batch, height, width) with batch {logits.shape[0]}, got shape {tuple(labels.shape)}."
            )
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}.")
        num_classes = logits.shape[1]
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        labels = labels.to(device=logits.device, dtype=torch.long)
        # `ignore_index` pixels are background whatever the number of classes (with more than 255 classes, 255 is
        # also a class id; the reference still ignores it).
        valid = (labels >= 0) & (labels < num_classes) & (labels != self.config.ignore_index)
        # With one-hot targets y, the binary cross-entropy -[y log s(x) + (1 - y) log(1 - s(x))] is
        # softplus(x) - y x: softplus summed over every logit, minus each labelled pixel's logit of its class. The
        # same value as `binary_cross_entropy_with_logits` against the one-hot tensor, without building it.
        labelled_logits = logits.gather(1, torch.where(valid, labels, 0).unsqueeze(1)).squeeze(1)
        return (F.softplus(logits).sum() - labelled_logits[valid].sum()) / logits.numel()

    # ------------------------------------------------------------------------------------------------ forward
    @property
    def pooling_size(self) -> tuple[int, int]:
        """Class-aggregation pooling in force: the training one while `self.training`, else the inference one."""
        size = self.config.training_pooling_size if self.training else self.config.inference_pooling_size
        return tuple(size)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        class_embeddings: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_intermediates: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CATSegSemanticSegmenterOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(N, 3, R, R)` or `(N, V, 3, R, R)`):
                CLIP views at `config.clip_resolution` from [`CATSegProcessor`]: one per image in whole mode, the V
                sliding-window views of each image in sliding mode.
            input_ids (`torch.LongTensor` of shape `(T, P, L)`, *optional*):
                Tokenised class names in every prompt template; give these or `class_embeddings` (or neither, for a
                model with a default vocabulary).
            attention_mask (`torch.LongTensor` of shape `(T, P, L)`, *optional*):
                Mask of `input_ids`.
            class_embeddings (`torch.FloatTensor` of shape `(T, P, C)` or `(N, T, P, C)`, *optional*):
                Precomputed class embeddings (from `get_class_embeddings`), shared by all images or one set per image.
            labels (`torch.LongTensor` of shape `(N, H, W)`, *optional*):
                Class ids per pixel (any H, W; whole-mode inputs); `config.ignore_index` and ids outside [0, T) count as
                background for the loss, as in the reference.
            output_hidden_states (`bool`, *optional*):
                Return the hidden states of the CLIP vision tower.
            output_attentions (`bool`, *optional*):
                Return the attention weights of the CLIP vision tower (eager attention).
            output_intermediates (`bool`, *optional*, defaults to `False`):
                Also return the cost volume and the image features.
            return_dict (`bool`, *optional*):
                Return a [`CATSegSemanticSegmenterOutput`] (default) or a tuple.
        """
        unknown = sorted(set(kwargs) - set(TransformersKwargs.__annotations__))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.forward got unexpected arguments {unknown}. Its inputs are pixel_values, "
                "input_ids, attention_mask, class_embeddings and labels (the processor's outputs hold no other model "
                "inputs)."
            )
        if pixel_values is not None and not isinstance(pixel_values, torch.Tensor):
            raise TypeError(
                f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}; call the processor with "
                "return_tensors='pt'."
            )
        if pixel_values is None or pixel_values.dim() not in (4, 5) or pixel_values.shape[-3] != 3:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(
                f"pixel_values must be (images, 3, R, R) or, for sliding-window views, (images, views, 3, R, R); got "
                f"{shape}. Use CATSegProcessor to prepare images."
            )
        num_images = pixel_values.shape[0]
        if pixel_values.numel() == 0:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)} hold no image: give at least one.")
        patch = self.config.clip_config.vision_config.patch_size
        if min(pixel_values.shape[-2:]) < patch:
            raise ValueError(
                f"pixel_values of size {tuple(pixel_values.shape[-2:])} are smaller than one CLIP patch ({patch} px); "
                f"give views at the CLIP resolution ({self.config.clip_resolution}), as CATSegProcessor makes them."
            )
        views_per_image = pixel_values.shape[1] if pixel_values.dim() == 5 else None
        if views_per_image is not None and labels is not None:
            raise ValueError("labels need whole-image inputs (images, 3, R, R); process training images with mode='whole'.")
        if class_embeddings is not None and input_ids is not None:
            raise ValueError("Give either input_ids or class_embeddings, not both.")
        if class_embeddings is None:
            if input_ids is not None:
                class_embeddings = self.get_class_embeddings(input_ids, attention_mask)
            else:
                class_embeddings = self.default_class_embeddings()
        if class_embeddings.dim() == 3:
            per_image_class_embeddings = class_embeddings.unsqueeze(0).expand(num_images, -1, -1, -1)
        elif class_embeddings.dim() == 4 and class_embeddings.shape[0] == num_images:
            per_image_class_embeddings = class_embeddings
        else:
            raise ValueError(
                f"class_embeddings must be (T, P, C) or (images={num_images}, T, P, C), got {tuple(class_embeddings.shape)}."
            )
        if per_image_class_embeddings.shape[1] == 0:
            raise ValueError("class_embeddings hold 0 classes: give at least one class name.")
        if per_image_class_embeddings.shape[2] != self.config.num_prompt_templates:
            raise ValueError(
                f"The model was built for {self.config.num_prompt_templates} prompt template(s) per class, but the class "
                f"embeddings have {per_image_class_embeddings.shape[2]}; tokenise with the model's prompt templates."
            )
        if per_image_class_embeddings.shape[-1] != self.config.projection_dim:
            raise ValueError(
                f"class_embeddings have dimension {per_image_class_embeddings.shape[-1]}, but this model's CLIP embeds "
                f"into {self.config.projection_dim}; compute them with this model's get_class_embeddings."
            )

        views = pixel_values.flatten(0, 1) if views_per_image is not None else pixel_values
        view_class_embeddings = per_image_class_embeddings
        if views_per_image is not None:
            view_class_embeddings = per_image_class_embeddings.repeat_interleave(views_per_image, dim=0)
        # Only flags actually given: output capture reads an absent flag from the config, but takes a given None as
        # "no", which would ignore `config.output_hidden_states` / `config.output_attentions`.
        capture_flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        capture_flags = {name: value for name, value in capture_flags.items() if value is not None}
        image_features = self.get_image_features(views.to(self.dtype), **capture_flags)
        view_class_embeddings = view_class_embeddings.to(image_features.image_embeddings.dtype)
        cost_volume = compute_cost_volume(image_features.image_embeddings, view_class_embeddings)
        logits, selected = self.aggregate(image_features, view_class_embeddings, cost_volume)
        loss = self.compute_loss(logits, labels) if labels is not None else None

        if views_per_image is not None:
            logits = logits.unflatten(0, (num_images, views_per_image))
            cost_volume = cost_volume.unflatten(0, (num_images, views_per_image))
            selected = selected.unflatten(0, (num_images, views_per_image)) if selected is not None else None
        return CATSegSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            class_embeddings=class_embeddings if output_intermediates else None,
            hidden_states=image_features.hidden_states,
            attentions=image_features.attentions,
            cost_volume=cost_volume if output_intermediates else None,
            image_features=image_features if output_intermediates else None,
            selected_classes=selected,
        )


class CATSegModel(CATSegForSemanticSegmentation):
    """
    [`CATSegForSemanticSegmentation`] under its first name: the same model, weights and outputs, registered for
    `AutoModel`. Folders saved with either name load with both classes.
    """

    _auto_class = "AutoModel"


__all__ = [
    "CATSegForSemanticSegmentation",
    "CATSegModel",
    "CATSegPreTrainedModel",
    "CATSegSemanticSegmenterOutput",
    "CATSegOutput",
    "CATSegImageFeatures",
    "compute_cost_volume",
]
