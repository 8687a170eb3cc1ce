"""Processor for CAT-Seg: the image processor plus the CLIP tokenizer that encodes the class-name prompts.

This file must only import torch, numpy, PIL, transformers and (relatively) our own processing files: it is copied
into saved model folders so that they load with `trust_remote_code=True` where `catseg_hf` is not installed.
"""

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, TextKwargs, Unpack
from transformers.utils import logging

from .image_processing_catseg import (
    _UNSUPPORTED_IMAGES_KWARGS,
    CATSegImageProcessor,
    CATSegImageProcessorKwargs,
    _short_repr,
)


logger = logging.get_logger(__name__)

DEFAULT_PROMPT_TEMPLATES = ["A photo of a {} in the scene"]
# Context length of CLIP's text encoder; used when the tokenizer does not declare a usable model_max_length.
CLIP_CONTEXT_LENGTH = 77
SYNONYM_SEPARATOR = ", "

# The tokenizer arguments the class-name prompts honour. The others of transformers' `TextKwargs` (text pairs,
# offsets, overflowing tokens, ...) have no meaning for a vocabulary of class names and are rejected when asked for.
_TEXT_OPTIONS = (
    "padding",
    "truncation",
    "max_length",
    "pad_to_multiple_of",
    "return_attention_mask",
    "padding_side",
    "add_special_tokens",
    "verbose",
    "return_tensors",
)
_MODALITY_KWARGS = ("text_kwargs", "images_kwargs", "videos_kwargs", "audio_kwargs")
# How many vocabularies a processor remembers having warned about (colliding prompts), so that a long-running
# service that sees many vocabularies does not keep them all alive.
_MAX_WARNED_VOCABULARIES = 64


def first_synonym(class_name: str) -> str:
    """The part of a class name the text encoder sees: `"a, b, c"` gives `"a"`; other names are used as they are.

    Only `", "` (comma and space) separates synonyms, as in the official implementation; the name is not stripped
    (the tokenizer's whitespace handling makes `"bed "` tokenise like `"bed"`).
    """
    return class_name.split(SYNONYM_SEPARATOR)[0]


class CATSegProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: CATSegImageProcessorKwargs
    text_kwargs: TextKwargs


class CATSegProcessor(ProcessorMixin):
    r"""
    Builds CAT-Seg's inputs: the CLIP views of the images (a [`CATSegImageProcessor`]) and the tokenised prompts of
    the class names (a CLIP tokenizer, e.g. from `catseg_hf.tokenization.build_clip_tokenizer`).

    Every class name is put into every prompt template (`template.format(name)`); for a name of the form
    `"a, b, c"` only the first synonym `"a"` is used. Prompts are tokenised to the text encoder's context length
    (77 for CLIP): padded with the tokenizer's padding token (attention mask 0), over-long prompts truncated (keeping
    `<|endoftext|>` last) with a warning.

    A class name given twice is an error. Different names that give the same prompts (the same token ids in every
    template: CLIP's tokenizer lowercases and cleans whitespace, so `"Cat"` and `"cat "` are one prompt, and
    `"sofa, couch"` and `"sofa, chair"` share their first synonym) are kept, as the official benchmark vocabularies
    have such entries (ADE-847: `"bag"` three times), with a warning naming them, once per vocabulary.

    The processor keeps no state between calls: the class names are given with every call.

    Args:
        image_processor ([`CATSegImageProcessor`]):
            The image processor.
        tokenizer ([`~transformers.CLIPTokenizer`]):
            The CLIP tokenizer (OpenAI's vocabulary; padding token id 0).
        prompt_templates (`str` or `list[str]`, *optional*, defaults to `["A photo of a {} in the scene"]`):
            Templates with one `{}` each, the ones the model was trained with. Saved with the processor; use
            [`~CATSegProcessor.encode_class_names`] to encode class names with other templates.
    """

    # Saved folders carry this file and an `auto_map`, so they load with `trust_remote_code=True` anywhere.
    _auto_class = "AutoProcessor"

    valid_processor_kwargs = CATSegProcessorKwargs
    # Processor-level defaults of the text kwargs (the tokenizer's own are no padding and no truncation): one tensor
    # shape for every prompt, the context length of the text encoder.
    text_kwargs = {"padding": "max_length", "truncation": True}

    def __init__(
        self,
        image_processor: CATSegImageProcessor,
        tokenizer: Any,
        prompt_templates: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)
        self.prompt_templates = _check_templates(
            DEFAULT_PROMPT_TEMPLATES if prompt_templates is None else prompt_templates
        )
        # Vocabularies already warned about for colliding prompts (not saved: not an `__init__` argument).
        self._warned_vocabularies: OrderedDict[tuple, None] = OrderedDict()

    @classmethod
    def from_model_config(
        cls,
        config: Any,
        bpe_path: Any = None,
        tokenizer: Any = None,
        prompt_templates: str | list[str] | None = None,
        **image_processor_kwargs: Any,
    ) -> "CATSegProcessor":
        """A processor for a `CATSegConfig`, with the given CLIP `tokenizer` or one built offline from a BPE merges
        file `bpe_path` (e.g. `bpe_simple_vocab_16e6.txt.gz`).

        This is the one place that reads preprocessing out of a model config: configs written before the processor
        owned it (old folders, converted official checkpoints) carry `image_mean`, `image_std`, `size_divisibility`
        and `prompt_templates`, which are used here when present; otherwise CLIP's normalisation, padding to a
        multiple of 32 and [`DEFAULT_PROMPT_TEMPLATES`]. The CLIP resolution is the model's. `prompt_templates` and
        `image_processor_kwargs` override what the config says; the templates must number
        `config.num_prompt_templates`.
        """
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
        settings = {"clip_resolution": config.clip_resolution}
        for key in ("image_mean", "image_std", "size_divisibility"):
            value = getattr(config, key, None)
            if value is not None:
                settings[key] = list(value) if isinstance(value, (list, tuple)) else value
        settings.update(image_processor_kwargs)
        if prompt_templates is None:
            prompt_templates = getattr(config, "prompt_templates", None) or DEFAULT_PROMPT_TEMPLATES
        templates = _check_templates(prompt_templates)
        expected = getattr(config, "num_prompt_templates", len(templates))
        if len(templates) != expected:
            raise ValueError(
                f"The model takes {expected} prompt template(s) per class but {len(templates)} were given "
                f"({templates}); pass prompt_templates=[...] with {expected} template(s)."
            )
        return cls(CATSegImageProcessor(**settings), tokenizer, prompt_templates=list(templates))

    def save_pretrained(self, save_directory: Any, push_to_hub: bool = False, **kwargs: Any) -> Any:
        # Saving writes `auto_map` into processor_config.json by setting it on the processor itself; a processor
        # loaded from that folder has none, so without this the saved and the reloaded processor would differ.
        had_auto_map = "auto_map" in self.__dict__
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            if not had_auto_map:
                self.__dict__.pop("auto_map", None)

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        **kwargs: Unpack[CATSegProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Processes images and/or class names.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*):
                The images (see [`CATSegImageProcessor.preprocess`]).
            text (`str` or `list[str]`, *optional*):
                The class names, in label-id order (index = class id); one string is one class name.
            kwargs ([`CATSegProcessorKwargs`], *optional*):
                Image-processor settings for this call (e.g. `mode="whole"`, `clip_resolution`), the tokenizer
                arguments of the prompts (`padding`, `truncation`, `max_length`, `pad_to_multiple_of`,
                `return_attention_mask`), and `return_tensors` (`"pt"`, `"np"` or `None`, the default). They may also
                be grouped as `images_kwargs={...}`, `text_kwargs={...}` and `common_kwargs={...}`; an argument given
                both flat and in a group is an error.

        Returns:
            [`BatchFeature`] with, for images, `pixel_values` (float32 `(batch, 3, R, R)` in whole mode,
            `(batch, num_views, 3, R, R)` in sliding mode); for text, `input_ids` and `attention_mask` (int64
            `(T, P, L)` for T class names, P templates and prompts of L tokens, 77 by default). With
            `return_tensors=None`, `pixel_values` is a list with one tensor per image and the ids are nested lists.
        """
        if images is None and text is None:
            raise ValueError("Pass `images`, `text` (the class names), or both.")
        self._check_call_kwargs(kwargs, has_images=images is not None, has_text=text is not None)
        output_kwargs = self._merge_kwargs(
            CATSegProcessorKwargs,
            tokenizer_init_kwargs=self.tokenizer.init_kwargs,
            **kwargs,
        )

        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images, **output_kwargs["images_kwargs"]))
        if text is not None:
            text_kwargs = {key: value for key, value in output_kwargs["text_kwargs"].items() if key in _TEXT_OPTIONS}
            text_kwargs.setdefault("return_tensors", None)
            data.update(self.encode_class_names(text, **text_kwargs))
        # Both parts are already converted to the requested tensor type.
        return BatchFeature(data=data)

    def encode_class_names(
        self,
        class_names: str | list[str],
        prompt_templates: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        **text_kwargs: Any,
    ) -> BatchFeature:
        r"""
        Tokenises every class name in every template.

        Args:
            class_names (`str` or `list[str]`):
                T class names (synonym lists `"a, b"` use their first synonym); one string is one class name.
            prompt_templates (`str` or `list[str]`, *optional*):
                P templates with one `{}` each (default: `self.prompt_templates`).
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"`, `"np"`, or `None` for nested lists.
            text_kwargs (`dict[str, Any]`, *optional*):
                Tokenizer arguments: `padding` (`"max_length"`, the default, or `"longest"`/`True`; `False` only
                with `return_tensors=None`), `truncation` (default `True`), `max_length` (default and upper bound:
                the context length of the text encoder, [`~CATSegProcessor.context_length`]), `pad_to_multiple_of`,
                `return_attention_mask` (default `True`), and `verbose`. `padding_side="right"` and
                `add_special_tokens=True` are accepted (the text encoder needs both).

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask`, int64 `(T, P, L)`.
        """
        names = _check_class_names(class_names)
        templates = self.prompt_templates if prompt_templates is None else _check_templates(prompt_templates)
        return_tensors = getattr(return_tensors, "value", return_tensors)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        options = self._tokenizer_options(text_kwargs)
        context_length = self.context_length
        prompts = [template.format(first_synonym(name)) for name in names for template in templates]

        # A first pass without truncation finds the prompts that do not fit, so that the message can name them.
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        limit = options["max_length"] if options["truncation"] else context_length
        too_long = sorted({names[i // len(templates)] for i, n in enumerate(lengths) if n > limit})
        if too_long and options["truncation"]:
            logger.warning(
                f"{len(too_long)} class name(s) give prompts longer than {limit} tokens and are truncated (the "
                f"end-of-text token is kept): {too_long}. Shorten them to keep the whole name."
            )
        elif too_long:
            raise ValueError(
                f"{len(too_long)} class name(s) give prompts longer than the text encoder's {context_length} tokens "
                f"and truncation is off: {too_long}. Shorten them, or pass truncation=True."
            )
        return_attention_mask = options.pop("return_attention_mask")
        encoded = self.tokenizer(prompts, return_attention_mask=True, **options)
        num_templates = len(templates)
        self._warn_about_identical_prompts(names, templates, encoded, num_templates)

        keys = ["input_ids", "attention_mask"] if return_attention_mask else ["input_ids"]
        rows = {key: encoded[key] for key in keys}
        if return_tensors is None:
            data = {
                key: [value[t * num_templates : (t + 1) * num_templates] for t in range(len(names))]
                for key, value in rows.items()
            }
            return BatchFeature(data=data)
        prompt_lengths = sorted({len(ids) for ids in rows["input_ids"]})
        if len(prompt_lengths) > 1:
            raise ValueError(
                f"The prompts have different lengths ({prompt_lengths[0]} to {prompt_lengths[-1]} tokens) with "
                f"padding={options['padding']!r}, so they cannot form a tensor; pad them (padding='max_length' or "
                "'longest') or pass return_tensors=None."
            )
        shape = (len(names), num_templates, prompt_lengths[0])
        data = {key: torch.tensor(value, dtype=torch.int64).reshape(shape) for key, value in rows.items()}
        if return_tensors == "np":
            data = {key: value.numpy() for key, value in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _warn_about_identical_prompts(
        self, names: list[str], templates: list[str], encoded: Any, num_templates: int
    ) -> None:
        """Warns, once per vocabulary, about different class names whose prompts the text encoder reads the same."""
        groups: dict[tuple, list[int]] = {}
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        for index in range(len(names)):
            rows = range(index * num_templates, (index + 1) * num_templates)
            # The mask too: a padding id can also be a real token ("!" is id 0 in CLIP's vocabulary).
            key = tuple((tuple(ids[row]), tuple(mask[row])) for row in rows)
            groups.setdefault(key, []).append(index)
        colliding = [group for group in groups.values() if len(group) > 1]
        if not colliding:
            return
        # `warning_once` would key on the message; this keys on the vocabulary, and forgets old ones.
        warned = self.__dict__.setdefault("_warned_vocabularies", OrderedDict())
        vocabulary = (tuple(names), tuple(templates))
        if vocabulary in warned:
            warned.move_to_end(vocabulary)
            return
        warned[vocabulary] = None
        while len(warned) > _MAX_WARNED_VOCABULARIES:
            warned.popitem(last=False)
        # At most 20 groups spelled out, so that a huge vocabulary does not give a page-long message.
        described = "; ".join(" = ".join(f"{names[i]!r} (index {i})" for i in group) for group in colliding[:20])
        if len(colliding) > 20:
            described += f"; and {len(colliding) - 20} more group(s)"
        logger.warning(
            f"{len(colliding)} group(s) of class names give identical prompts for the text encoder (the same token "
            f"ids in every template), so the model cannot tell the names of a group apart: the later ones score like "
            f"the first, and ties go to the lowest index: {described}. CLIP's tokenizer lowercases and cleans "
            "whitespace, and only the first synonym before ', ' is read. If both must be found, make the names (or "
            "their first synonyms) differ; benchmark vocabularies such as ADE-847 keep such entries, as their "
            "official evaluation does."
        )

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
        return_segmentation_scores: bool = False,
        image_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        return_probabilities: bool | None = None,
    ) -> list[Any]:
        """Label maps from the model outputs; see [`CATSegImageProcessor.post_process_semantic_segmentation`]."""
        return self.image_processor.post_process_semantic_segmentation(
            outputs,
            target_sizes=target_sizes,
            return_segmentation_scores=return_segmentation_scores,
            image_sizes=image_sizes,
            return_probabilities=return_probabilities,
        )

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.image_processor.model_input_names + ["input_ids", "attention_mask"]))

    # ------------------------------------------------------------------------------------------------ kwargs checks
    def _check_call_kwargs(self, kwargs: dict[str, Any], has_images: bool, has_text: bool) -> None:
        """Rejects, with the argument named, every call kwarg that would otherwise be silently ignored."""
        text_keys = set(TextKwargs.__annotations__)
        image_keys = set(getattr(self.image_processor, "valid_kwargs", CATSegImageProcessorKwargs).__annotations__)
        processor_keys = set(CATSegProcessorKwargs.__annotations__) - set(_MODALITY_KWARGS)

        given_text: dict[str, Any] = {}
        given_images: dict[str, Any] = {}
        common = kwargs.get("common_kwargs") or {}
        for key, value in kwargs.items():
            if key == "prompt_templates":
                raise TypeError(
                    "CATSegProcessor takes no `prompt_templates` per call: they are a setting of the processor "
                    "(`CATSegProcessor(..., prompt_templates=...)`, saved with it). To encode class names with other "
                    "templates use `processor.encode_class_names(names, prompt_templates=...)`."
                )
            if key in ("videos_kwargs", "audio_kwargs", "videos", "audio"):
                raise TypeError(f"CATSegProcessor takes images and text only, got `{key}`.")
            if key in ("text_kwargs", "images_kwargs", "common_kwargs"):
                if not isinstance(value, dict):
                    raise TypeError(f"`{key}` must be a dict, got {type(value).__name__}.")
                allowed = {"text_kwargs": text_keys, "images_kwargs": image_keys}.get(key, text_keys | image_keys)
                unknown = sorted(set(value) - allowed)
                if unknown:
                    raise TypeError(f"`{key}` got unexpected keyword argument(s) {unknown}.")
                if key != "common_kwargs":
                    conflicting = sorted(k for k in value if k in common and common[k] != value[k])
                    if conflicting:
                        raise ValueError(
                            f"Keyword argument(s) {conflicting} were passed two times with different values: in "
                            f"`common_kwargs` and in `{key}`."
                        )
                if key == "text_kwargs":
                    given_text.update(value)
                elif key == "images_kwargs":
                    given_images.update(value)
            elif key in processor_keys:
                if value:
                    raise ValueError(f"CATSegProcessor does not support `{key}=True` (it has no multimodal tokens).")
            elif key in text_keys or key in image_keys:
                if key in common and common[key] != value:
                    raise ValueError(
                        f"Keyword argument `{key}` was passed two times with different values: in `common_kwargs` "
                        f"({common[key]!r}) and as a **kwarg ({value!r})."
                    )
                if key in text_keys and key not in image_keys:
                    given_text[key] = value
                elif key in image_keys and key not in text_keys:
                    given_images[key] = value
            else:
                raise TypeError(
                    f"CATSegProcessor got an unexpected keyword argument `{key}`. It takes the image-processor "
                    f"settings {sorted(image_keys - set(_UNSUPPORTED_IMAGES_KWARGS))} and the text arguments "
                    f"{sorted(set(_TEXT_OPTIONS) & text_keys)}."
                )

        unsupported = sorted(key for key, value in given_text.items() if key not in _TEXT_OPTIONS and value)
        if unsupported:
            raise ValueError(
                f"CATSegProcessor does not support the text argument(s) {unsupported}: the text is a list of class "
                f"names, tokenised with {sorted(_TEXT_OPTIONS)}."
            )
        if given_images and not has_images:
            raise ValueError(
                f"Image-processing argument(s) {sorted(given_images)} were given without `images`; pass images or "
                "drop them."
            )
        if given_text and not has_text:
            raise ValueError(
                f"Text argument(s) {sorted(given_text)} were given without `text`; pass text or drop them."
            )

    def _tokenizer_options(self, text_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The tokenizer arguments of `encode_class_names`, with CAT-Seg's defaults, checked."""
        unknown = sorted(set(text_kwargs) - set(_TEXT_OPTIONS) - {"return_tensors"})
        if unknown:
            raise TypeError(
                f"encode_class_names got unexpected keyword argument(s) {unknown}; it takes {sorted(_TEXT_OPTIONS)}."
            )
        context_length = self.context_length
        options = {
            "padding": text_kwargs.get("padding", "max_length"),
            "truncation": text_kwargs.get("truncation", True),
            "max_length": text_kwargs.get("max_length"),
            "pad_to_multiple_of": text_kwargs.get("pad_to_multiple_of"),
            "return_attention_mask": text_kwargs.get("return_attention_mask"),
            "verbose": text_kwargs.get("verbose", True),
        }
        for key, value in options.items():
            # `None` asks for the default, as in the tokenizer.
            if value is None:
                options[key] = {"padding": "max_length", "truncation": True, "return_attention_mask": True}.get(key)
        options["padding"] = getattr(options["padding"], "value", options["padding"])
        options["truncation"] = getattr(options["truncation"], "value", options["truncation"])
        if options["truncation"] in ("do_not_truncate",):
            options["truncation"] = False
        if options["max_length"] is None:
            options["max_length"] = context_length
        elif options["max_length"] > context_length:
            raise ValueError(
                f"max_length={options['max_length']} is longer than the text encoder's context of {context_length} "
                "tokens (the tokenizer's model_max_length)."
            )
        if text_kwargs.get("padding_side") not in (None, "right"):
            raise ValueError(
                f"padding_side={text_kwargs['padding_side']!r} is not supported: CLIP's text encoder reads "
                "right-padded prompts (left padding would shift the position embeddings)."
            )
        if text_kwargs.get("add_special_tokens") not in (None, True):
            raise ValueError(
                "add_special_tokens=False is not supported: the text encoder reads each prompt at its end-of-text "
                "token."
            )
        return options


def _check_class_names(class_names: Any) -> list[str]:
    if isinstance(class_names, str):
        # One string is one class (its synonyms separated by ", "), as one string is one text in transformers.
        class_names = [class_names]
    if not isinstance(class_names, (list, tuple)):
        raise TypeError(
            "`text` must be a class name or a list of class names, got "
            f"{type(class_names).__name__} {_short_repr(class_names)}."
        )
    names = list(class_names)
    if not names:
        raise ValueError(
            f"The list of class names is empty (text={_short_repr(class_names)}): give at least one class name."
        )
    if len(names) == 1 and isinstance(names[0], str) and not first_synonym(names[0]).strip():
        raise ValueError(f"The class name {names[0]!r} is empty: give a non-empty class name (or a list of them).")
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


__all__ = ["CATSegProcessor", "CATSegProcessorKwargs", "DEFAULT_PROMPT_TEMPLATES", "first_synonym"]
