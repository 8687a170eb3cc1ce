"""Processor for CAT-Seg: the image processor plus the CLIP tokenizer that encodes the class-name prompts.

This file must only import torch, numpy, PIL, transformers and (relatively) our own processing files: it is copied
into saved model folders so that they load with `trust_remote_code=True` where `catseg_hf` is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .image_processing_catseg import CATSegImageProcessor  # noqa: F401  (the image processor this one pairs with)


logger = logging.get_logger(__name__)

DEFAULT_PROMPT_TEMPLATES = ["A photo of a {} in the scene"]
# Context length of CLIP's text encoder; used when the tokenizer does not declare a usable model_max_length.
CLIP_CONTEXT_LENGTH = 77
SYNONYM_SEPARATOR = ", "


def first_synonym(class_name: str) -> str:
    """The part of a class name the text encoder sees: `"a, b, c"` gives `"a"`; other names are used as they are.

    Only `", "` (comma and space) separates synonyms, as in the official implementation; the name is not stripped
    (the tokenizer's whitespace handling makes `"bed "` tokenise like `"bed"`).
    """
    return class_name.split(SYNONYM_SEPARATOR)[0]


class CATSegProcessor(ProcessorMixin):
    r"""
    Builds CAT-Seg's inputs: the CLIP views of the images (a [`CATSegImageProcessor`]) and the tokenised prompts of
    the class names (a CLIP tokenizer, e.g. from `catseg_hf.tokenization.build_clip_tokenizer`).

    Every class name is put into every prompt template (`template.format(name)`); for a name of the form
    `"a, b, c"` only the first synonym `"a"` is used. Prompts are tokenised to CLIP's context length (77): padded with
    id 0 (attention mask 0), over-long prompts truncated (keeping `<|endoftext|>` last) with a warning.

    The processor keeps no state between calls: the class names are given with every call.

    Args:
        image_processor ([`CATSegImageProcessor`]):
            The image processor.
        tokenizer ([`~transformers.CLIPTokenizer`]):
            The CLIP tokenizer (OpenAI's vocabulary; padding token id 0).
        prompt_templates (`list[str]`, *optional*, defaults to `["A photo of a {} in the scene"]`):
            Templates with one `{}` each, used when a call gives none. Saved with the processor.
    """

    # Saved folders carry this file and an `auto_map`, so they load with `trust_remote_code=True` anywhere.
    _auto_class = "AutoProcessor"

    def __init__(
        self,
        image_processor: Any,
        tokenizer: Any,
        prompt_templates: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)
        self.prompt_templates = _check_templates(
            DEFAULT_PROMPT_TEMPLATES if prompt_templates is None else prompt_templates
        )

    @classmethod
    def from_model_config(
        cls, config: Any, bpe_path: Any = None, tokenizer: Any = None, **image_processor_kwargs: Any
    ) -> "CATSegProcessor":
        """A processor matching a `CATSegConfig` (CLIP resolution, normalisation, padding, prompt templates), with the
        given CLIP `tokenizer`, or one built offline from a BPE merges file `bpe_path` (e.g.
        `bpe_simple_vocab_16e6.txt.gz`)."""
        if tokenizer is None:
            if bpe_path is None:
                raise ValueError("from_model_config needs a CLIP `tokenizer` or the `bpe_path` of a BPE merges file.")
            try:  # inside the package; a saved model folder holds no tokenization module
                from catseg_hf.tokenization import build_clip_tokenizer
            except ImportError as error:  # pragma: no cover - only without the package installed
                raise ImportError("from_model_config needs the catseg_hf package (pip install catseg-hf).") from error

            tokenizer = build_clip_tokenizer(
                bpe_path, model_max_length=config.clip_config.text_config.max_position_embeddings
            )
        image_processor = CATSegImageProcessor(
            clip_resolution=config.clip_resolution,
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
            size_divisibility=config.size_divisibility,
            **image_processor_kwargs,
        )
        return cls(image_processor, tokenizer, prompt_templates=list(config.prompt_templates))

    def __call__(
        self,
        images: Any = None,
        text: Sequence[str] | None = None,
        prompt_templates: Sequence[str] | str | None = None,
        mode: str | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Processes images and/or class names.

        Args:
            images: one image or a list of images (PIL, numpy or torch; see [`CATSegImageProcessor.preprocess`]).
            text (`list[str]`): the class names, in label-id order (index = class id).
            prompt_templates: templates for this call (default: `self.prompt_templates`).
            mode: `"sliding"` or `"whole"` (default: the image processor's `mode`).
            return_tensors: `"pt"` (default) or `"np"`.
            kwargs: further arguments of the image processor (e.g. `clip_resolution`, `input_data_format`).

        Returns:
            [`BatchFeature`] with, for images, `pixel_values` `(num_views_total, 3, R, R)` float32, `original_sizes`
            `(batch, 2)` int64 and `view_layout` `(batch, 4)` int64; for text, `input_ids` and `attention_mask`
            `(T, P, 77)` int64 for T class names and P templates.
        """
        if images is None and text is None:
            raise ValueError("Pass `images`, `text` (a list of class names), or both.")
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images, mode=mode, return_tensors=return_tensors, **kwargs))
        elif kwargs or mode is not None:
            logger.warning(
                f"Image-processing arguments {sorted(kwargs) + (['mode'] if mode is not None else [])} are ignored "
                "because no images were given."
            )
        if text is not None:
            data.update(self.encode_class_names(text, prompt_templates=prompt_templates, return_tensors=return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def encode_class_names(
        self,
        class_names: Sequence[str],
        prompt_templates: Sequence[str] | str | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Tokenises every class name in every template.

        Args:
            class_names (`list[str]`): T class names (synonym lists `"a, b"` use their first synonym).
            prompt_templates: P templates with one `{}` each (default: `self.prompt_templates`).
            return_tensors: `"pt"` (default) or `"np"`.

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask`, int64 `(T, P, context_length)`.
        """
        names = _check_class_names(class_names)
        templates = self.prompt_templates if prompt_templates is None else _check_templates(prompt_templates)
        context_length = self.context_length
        prompts = [template.format(first_synonym(name)) for name in names for template in templates]

        # A first pass without truncation finds the prompts that do not fit, so that the warning can name them.
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        too_long = sorted({names[i // len(templates)] for i, n in enumerate(lengths) if n > context_length})
        if too_long:
            logger.warning(
                f"{len(too_long)} class name(s) give prompts longer than CLIP's {context_length} tokens and are "
                f"truncated (the end-of-text token is kept): {too_long}. Shorten them to keep the whole name."
            )
        encoded = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=context_length,
            return_attention_mask=True,
            return_tensors="pt",
        )
        shape = (len(names), len(templates), context_length)
        data = {
            "input_ids": encoded["input_ids"].to(torch.int64).reshape(shape),
            "attention_mask": encoded["attention_mask"].to(torch.int64).reshape(shape),
        }
        if return_tensors == "np":
            data = {key: value.numpy() for key, value in data.items()}
        elif return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}.")
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def context_length(self) -> int:
        """Token length of every prompt: the tokenizer's `model_max_length` (77 for CLIP)."""
        length = getattr(self.tokenizer, "model_max_length", None)
        # Tokenizers without a declared length report a huge sentinel value; CLIP's text encoder takes 77.
        if not isinstance(length, int) or length <= 0 or length > 100_000:
            return CLIP_CONTEXT_LENGTH
        return length

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        return_probabilities: bool = False,
    ) -> list[Any]:
        """Label maps from the model outputs; see [`CATSegImageProcessor.post_process_semantic_segmentation`]."""
        return self.image_processor.post_process_semantic_segmentation(
            outputs, target_sizes=target_sizes, return_probabilities=return_probabilities
        )

    @property
    def model_input_names(self) -> list[str]:
        return list(
            dict.fromkeys(self.image_processor.model_input_names + ["input_ids", "attention_mask"])
        )


def _check_class_names(class_names: Any) -> list[str]:
    if isinstance(class_names, str):
        raise ValueError(
            f"`text` must be a list of class names, got the single string {class_names!r}. Pass e.g. "
            f"[{class_names!r}] for one class, or ['cat', 'dog', 'grass'] for several (a name 'a, b' lists synonyms "
            "of ONE class, so a comma-separated string is not split into classes)."
        )
    if not isinstance(class_names, (list, tuple)):
        raise TypeError(f"`text` must be a list of class-name strings, got {type(class_names).__name__}.")
    names = list(class_names)
    if not names:
        raise ValueError("The list of class names is empty: give at least one class name.")
    not_str = [(i, type(n).__name__) for i, n in enumerate(names) if not isinstance(n, str)]
    if not_str:
        raise TypeError(f"Class names must be strings; these entries are not (index, type): {not_str}.")
    empty = [i for i, n in enumerate(names) if not first_synonym(n).strip()]
    if empty:
        raise ValueError(
            f"Class names at indices {empty} are empty (or their first synonym before ', ' is): "
            f"{[names[i] for i in empty]}. Give every class a non-empty name."
        )
    seen: dict[str, int] = {}
    duplicates = []
    for index, name in enumerate(names):
        if name in seen:
            duplicates.append((name, seen[name], index))
        else:
            seen[name] = index
    if duplicates:
        raise ValueError(
            "Duplicate class names (name, first index, repeated index): "
            f"{duplicates}. Each class must appear once; merge or rename them."
        )
    return names


def _check_templates(prompt_templates: Any) -> list[str]:
    # A single template string is accepted as a list of one.
    templates = [prompt_templates] if isinstance(prompt_templates, str) else prompt_templates
    if not isinstance(templates, (list, tuple)) or not templates:
        raise ValueError(
            f"prompt_templates must be a non-empty list of strings with one '{{}}' each, got {prompt_templates!r}."
        )
    checked = []
    for template in templates:
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(
                f"Each prompt template must be a string with a '{{}}' for the class name, got {template!r}."
            )
        try:
            template.format("class")
        except (IndexError, KeyError, ValueError) as err:
            raise ValueError(
                f"Prompt template {template!r} cannot be filled with one class name ({err!r}); use exactly one '{{}}' "
                "and write literal braces as '{{' and '}}'."
            ) from err
        checked.append(template)
    return checked


__all__ = ["CATSegProcessor", "DEFAULT_PROMPT_TEMPLATES", "first_synonym"]
