"""Class vocabularies: class names turned into CAT-Seg class embeddings once, then reused for every image.

CAT-Seg's text side depends only on the class names, so every front end (the pipelines, the CLI, the evaluation
runner) embeds a vocabulary once and runs images against the embeddings. The model itself keeps no cache, so that its
forward stays a pure function of its inputs (and traces, exports and compiles).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Vocabulary:
    """Class names with their CAT-Seg class embeddings.

    Args:
        class_names (`tuple[str, ...]`):
            The names, in label-id order.
        class_embeddings (`torch.FloatTensor` of shape `(T, P, C)`):
            One embedding per class and prompt template, as `model.get_class_embeddings` returns them; pass them to
            the model as `class_embeddings=`.
    """

    class_names: tuple[str, ...]
    class_embeddings: torch.Tensor

    def __len__(self) -> int:
        return len(self.class_names)

    @classmethod
    def encode(
        cls,
        model: Any,
        processor: Any,
        class_names: Sequence[str] | str,
        prompt_templates: Sequence[str] | str | None = None,
    ) -> Vocabulary:
        """Tokenises `class_names` with the processor (every name in every prompt template) and embeds them with the
        model's text tower, without gradients, on the model's device.

        Args:
            model (`Any`):
                A CAT-Seg model (anything with `get_class_embeddings`).
            processor (`Any`):
                Its `CATSegProcessor`.
            class_names (`str` or `list[str]`):
                One name or a list (a name `"a, b"` lists synonyms of one class).
            prompt_templates (`list[str]`, *optional*):
                Default: the processor's.
        """
        names = [class_names] if isinstance(class_names, str) else list(class_names)
        tokens = processor.encode_class_names(names, prompt_templates=prompt_templates, return_tensors="pt")
        with torch.no_grad():
            embeddings = model.get_class_embeddings(
                tokens["input_ids"].to(model.device), tokens["attention_mask"].to(model.device)
            )
        return cls(tuple(names), embeddings)


class VocabularyCache:
    """The last few vocabularies a front end used, so that repeated calls with the same classes only run images.

    Keyed by the class names and templates; the embeddings belong to one model in its current state, so a front end
    that changes the model's weights must `clear()` it.
    """

    def __init__(self, max_size: int = 8) -> None:
        self.max_size = max_size
        self._entries: OrderedDict[tuple, Vocabulary] = OrderedDict()

    def get(
        self,
        model: Any,
        processor: Any,
        class_names: Sequence[str] | str,
        prompt_templates: Sequence[str] | str | None = None,
    ) -> Vocabulary:
        """The vocabulary of `class_names` (see [`Vocabulary.encode`]), encoded on first use."""
        names = (class_names,) if isinstance(class_names, str) else tuple(class_names)
        templates = (prompt_templates,) if isinstance(prompt_templates, str) else prompt_templates
        key = (names, None if templates is None else tuple(templates), str(model.device), model.dtype)
        vocabulary = self._entries.get(key)
        if vocabulary is None:
            vocabulary = Vocabulary.encode(model, processor, list(names), prompt_templates)
            self._entries[key] = vocabulary
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return vocabulary

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["Vocabulary", "VocabularyCache"]
