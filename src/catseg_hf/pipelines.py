"""Inference pipelines for CAT-Seg.

Two ways to segment an image with transformers' `pipeline(...)` once `catseg_hf` is imported:

- the `"zero-shot-image-segmentation"` task (registered here), where every call names its own classes:

  ```python
  segmenter = pipeline("zero-shot-image-segmentation", model="catseg-base")
  segmenter("room.jpg", candidate_labels=["wall", "floor", "sofa"])
  ```

- transformers' built-in `"image-segmentation"` task, for a model folder that carries a default vocabulary (see
  [`set_default_vocabulary`]): that pipeline gives the model images only, so the class names must live in the model.

Both return the `image-segmentation` pipeline's semantic format: for each image, one
`{"score": None, "label": str, "mask": PIL.Image}` per class present in the prediction, in class order, with "L"
masks (255 inside the class, 0 elsewhere) at the original image size. The masks of one image partition it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoModelForSemanticSegmentation, Pipeline
from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from .configuration_catseg import CATSegConfig
from .inference import image_size, load_image, predict_logits, to_label_maps
from .modeling_catseg import CATSegForSemanticSegmentation
from .vocabulary import VocabularyCache


logger = logging.get_logger(__name__)

ZERO_SHOT_IMAGE_SEGMENTATION_TASK = "zero-shot-image-segmentation"

# Keyword arguments that transformers' `pipeline()` forwards to every pipeline class although they are not pipeline
# parameters (they were used for loading); they must not trigger the "unknown argument" warning.
_LOADING_ARGUMENTS = frozenset({"local_files_only"})


class ZeroShotImageSegmentationPipeline(Pipeline):
    """
    Open-vocabulary semantic segmentation with CAT-Seg: every pixel of the image gets one of the candidate labels.

    Example:

    ```python
    >>> import catseg_hf  # registers the task
    >>> from transformers import pipeline

    >>> segmenter = pipeline("zero-shot-image-segmentation", model="catseg-base")
    >>> segments = segmenter("room.jpg", candidate_labels=["wall", "floor", "sofa"])
    >>> [(segment["label"], segment["mask"].size) for segment in segments]
    [('wall', (640, 480)), ('floor', (640, 480)), ('sofa', (640, 480))]
    ```

    The model and its [`CATSegProcessor`] (image processor and CLIP tokenizer) are loaded from the model folder or
    Hub repository. The candidate labels are embedded once per vocabulary (a [`~catseg_hf.vocabulary.VocabularyCache`]
    the pipeline owns), so repeated calls with the same labels only run the image side. Lists, datasets and
    generators of images are batched by transformers' own machinery (`batch_size=`): every image is one row of the
    batch, its sliding-window views inside that row.

    This pipeline can be loaded from [`pipeline`] with the task identifier `"zero-shot-image-segmentation"` after
    `import catseg_hf`.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.processor is None or not hasattr(self.processor, "encode_class_names"):
            raise ValueError(
                "The zero-shot-image-segmentation pipeline needs a CATSegProcessor (image processor + CLIP tokenizer), "
                f"got {type(self.processor).__name__}. Load the model from a folder saved with its processor, or pass "
                "processor=CATSegProcessor.from_pretrained(...)."
            )
        # transformers' batching collates with the pipeline's image processor.
        if self.image_processor is None:
            self.image_processor = self.processor.image_processor
        self.vocabularies = VocabularyCache()

    # ------------------------------------------------------------------------------------------------- parameters
    def _sanitize_parameters(
        self,
        candidate_labels: Sequence[str] | str | None = None,
        prompt_templates: Sequence[str] | str | None = None,
        mode: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        unknown = sorted(set(kwargs) - _LOADING_ARGUMENTS)
        if unknown:
            raise TypeError(
                f"zero-shot-image-segmentation got unknown arguments {unknown}; its arguments are candidate_labels, "
                "prompt_templates, mode, timeout, batch_size and num_workers."
            )
        # Only what the caller gave goes into the dictionaries, so that call arguments override construction ones
        # and the method defaults apply otherwise.
        preprocess_params: dict[str, Any] = {}
        forward_params: dict[str, Any] = {}
        if candidate_labels is not None:
            if not isinstance(candidate_labels, (str, list, tuple)):
                raise TypeError(
                    f"candidate_labels must be a class name or a list of class names, got "
                    f"{type(candidate_labels).__name__} {candidate_labels!r}."
                )
            forward_params["candidate_labels"] = candidate_labels
        if prompt_templates is not None:
            forward_params["prompt_templates"] = prompt_templates
        if mode is not None:
            preprocess_params["mode"] = mode
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        postprocess_params = {"candidate_labels": forward_params["candidate_labels"]} if candidate_labels is not None else {}
        return preprocess_params, forward_params, postprocess_params

    # ------------------------------------------------------------------------------------------------- call
    def __call__(self, images: Any = None, candidate_labels: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
        """
        Segment one image or a list of images into the candidate labels.

        Args:
            images (`str`, `os.PathLike`, `PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list of them):
                Local paths, HTTP(S) URLs, PIL images, or arrays on the 0-255 scale (HWC or CHW; a 4-D array is a
                list of images). A list may mix sizes. Datasets and generators are streamed.
            candidate_labels (`str` or `list[str]`):
                The class names, in label order (one string is one class). A name `"a, b"` lists synonyms of one
                class (the text encoder sees the first one). Optional when the model carries a default vocabulary
                (see [`set_default_vocabulary`]).
            prompt_templates (`list[str]`, *optional*):
                Templates with one `{}` each (default: the processor's, i.e. the model's). The model was trained with a
                fixed number of templates; give that many.
            mode (`str`, *optional*):
                `"sliding"` (default; the protocol of the paper) or `"whole"` (one view per image, faster).
            batch_size (`int`, *optional*):
                Images per model call (default: the pipeline's `batch_size`, else 1).
            timeout (`float`, *optional*):
                Seconds to wait for an image URL.

        Returns:
            For one image, a list with one dict per class present in the prediction, in label order:

            - **score** (`None`) -- CAT-Seg gives no per-segment confidence (the `image-segmentation` convention for
              semantic segmentation).
            - **label** (`str`) -- the candidate label.
            - **mask** (`PIL.Image.Image`) -- an "L" image at the original image size, 255 where the label wins and 0
              elsewhere. The masks of one image do not overlap and cover it.

            For a list of images, a list of such lists.
        """
        if images is None:
            images = kwargs.pop("inputs", None)
        if images is None:
            raise ValueError("Give an image (a path, URL, PIL image or array) or a list of images to segment.")
        if candidate_labels is not None:
            kwargs["candidate_labels"] = candidate_labels
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            images = list(images)
        if isinstance(images, tuple):
            images = list(images)
        if isinstance(images, list) and not images:
            return []
        return super().__call__(images, **kwargs)

    # ------------------------------------------------------------------------------------------------- stages
    def preprocess(self, image: Any, mode: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        # The stages of catseg_hf.inference.segment, split as transformers' batching needs them.
        image = load_image(image, timeout)
        inputs = self.processor.image_processor(image, mode=mode, return_tensors="pt")
        return {"pixel_values": inputs["pixel_values"], "image_size": torch.tensor([image_size(image)])}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        candidate_labels: Sequence[str] | str | None = None,
        prompt_templates: Sequence[str] | str | None = None,
    ) -> dict[str, Any]:
        class_embeddings = None  # the model's default vocabulary
        if candidate_labels is None:
            if prompt_templates is not None:
                raise ValueError(
                    "prompt_templates only apply to candidate_labels: the model's default vocabulary was tokenised "
                    "when it was stored. Pass candidate_labels=[...] together with prompt_templates."
                )
            self._default_labels()  # says what to do when the model has no default vocabulary
        else:
            vocabulary = self.vocabularies.get(self.model, self.processor, candidate_labels, prompt_templates)
            class_embeddings = vocabulary.class_embeddings
        logits = predict_logits(self.model, model_inputs["pixel_values"], class_embeddings)
        return {"logits": logits, "image_size": model_inputs["image_size"]}

    def postprocess(
        self, model_outputs: dict[str, Any], candidate_labels: Sequence[str] | str | None = None
    ) -> list[dict[str, Any]]:
        if candidate_labels is None:
            labels = self._default_labels()
        else:
            labels = [candidate_labels] if isinstance(candidate_labels, str) else list(candidate_labels)
        label_map = to_label_maps(self.processor, model_outputs["logits"], model_outputs["image_size"].tolist())[0]
        return label_map_to_annotations(label_map, labels)

    # ------------------------------------------------------------------------------------------------- helpers
    def _default_labels(self) -> list[str]:
        config = self.model.config
        if getattr(config, "default_class_input_ids", None) is None:
            raise ValueError(
                "Give the classes to segment: candidate_labels=['wall', 'floor', ...]. (This model stores no default "
                "vocabulary; catseg_hf.pipelines.set_default_vocabulary adds one.)"
            )
        return default_vocabulary(config)


def label_map_to_annotations(label_map: torch.Tensor | np.ndarray, labels: Sequence[str]) -> list[dict[str, Any]]:
    """The `image-segmentation` pipeline's semantic output for one label map.

    Args:
        label_map (`torch.Tensor | np.ndarray`):
            An integer `(height, width)` map of class ids (indices into `labels`).
        labels (`Sequence[str]`):
            The class names.

    Returns:
        One `{"score": None, "label": name, "mask": PIL "L" image (0/255)}` per class id present, in id order.
    """
    segmentation = label_map.cpu().numpy() if isinstance(label_map, torch.Tensor) else np.asarray(label_map)
    annotations = []
    for class_id in np.unique(segmentation):
        mask = (segmentation == class_id).astype(np.uint8) * np.uint8(255)
        annotations.append({"score": None, "label": labels[int(class_id)], "mask": Image.fromarray(mask)})
    return annotations


def default_vocabulary(config: Any) -> list[str]:
    """The class names of a model's default vocabulary (`config.id2label` in id order); empty if it has none.

    Raises:
        ValueError: if the stored token ids and `id2label` disagree on the number of classes.
    """
    ids = getattr(config, "default_class_input_ids", None)
    if ids is None:
        return []
    id2label = {int(key): value for key, value in (getattr(config, "id2label", None) or {}).items()}
    names = [id2label.get(index) for index in range(len(ids))]
    if None in names or len(id2label) != len(ids):
        raise ValueError(
            f"The model's default vocabulary has token ids for {len(ids)} classes but id2label has {len(id2label)} "
            "entries (ids 0..N-1 expected); store it again with catseg_hf.pipelines.set_default_vocabulary."
        )
    return names


def set_default_vocabulary(
    model: Any,
    processor: Any,
    class_names: Sequence[str] | str,
    prompt_templates: Sequence[str] | str | None = None,
) -> None:
    """Stores a default vocabulary in a CAT-Seg model, for calls that name no classes.

    transformers' `image-segmentation` pipeline (and `model(pixel_values=...)` without `input_ids`) give the
    model images only; with a default vocabulary the model segments into these classes. The vocabulary lives in
    the config, so `model.save_pretrained(folder)` writes a self-contained folder:

    - `id2label` / `label2id`: the class names (the `image-segmentation` pipeline reads its labels there);
    - `default_class_input_ids` / `default_class_attention_mask`: the tokenised prompts `(T, P, L)`, cut after the
      longest prompt (CLIP's text tower is causal and read at the end-of-text token, so the padding after it never
      changes the embeddings, and config.json stays small);
    The saved folder names the model class for `AutoModelForSemanticSegmentation` in its `auto_map` (every CAT-Seg
    folder does), so it also loads in `pipeline("image-segmentation", model=folder, trust_remote_code=True)` where
    catseg_hf is not installed.

    Args:
        model (`Any`):
            A `CATSegForSemanticSegmentation` (changed in place).
        processor (`Any`):
            Its `CATSegProcessor` (tokenizer and default prompt templates).
        class_names (`list[str]`):
            The class names in label-id order (a name `"a, b"` lists synonyms of one class;
            a single string is one class).
        prompt_templates (`list[str]`, *optional*):
            Default: the processor's.

    Raises:
        ValueError: for invalid class names or templates, or a number of templates the model was not built for.
    """
    config = model.config
    names = [class_names] if isinstance(class_names, str) else list(class_names)
    encoded = processor.encode_class_names(names, prompt_templates=prompt_templates, return_tensors="pt")
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    expected = config.num_prompt_templates
    if input_ids.shape[1] != expected:
        raise ValueError(
            f"The model was built for {expected} prompt template(s) per class, got {input_ids.shape[1]}; pass "
            f"{expected} template(s) (the processor's are {list(processor.prompt_templates)})."
        )
    # Prompts are right-padded, so the longest prompt's length bounds every real token.
    length = int(attention_mask.sum(dim=-1).max())
    config.default_class_input_ids = input_ids[..., :length].tolist()
    config.default_class_attention_mask = attention_mask[..., :length].tolist()
    config.id2label = dict(enumerate(names))
    config.label2id = {name: index for index, name in enumerate(names)}


def register_pipelines() -> None:
    """Registers CAT-Seg with transformers' pipelines (run on `import catseg_hf`; calling it again is harmless).

    - the `"zero-shot-image-segmentation"` task, implemented by [`ZeroShotImageSegmentationPipeline`];
    - `CATSegForSemanticSegmentation` as an `AutoModelForSemanticSegmentation`, which the built-in
      `"image-segmentation"` pipeline loads models with.
    """
    registered = PIPELINE_REGISTRY.supported_tasks.get(ZERO_SHOT_IMAGE_SEGMENTATION_TASK)
    # A second registration would log transformers' "already registered, overwriting" warning.
    if registered is None or registered.get("impl") is not ZeroShotImageSegmentationPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            ZERO_SHOT_IMAGE_SEGMENTATION_TASK,
            pipeline_class=ZeroShotImageSegmentationPipeline,
            pt_model=AutoModel,
            type="multimodal",
        )
    AutoModelForSemanticSegmentation.register(CATSegConfig, CATSegForSemanticSegmentation, exist_ok=True)
    # The image-segmentation pipeline checks the model's class name against the static name tables only (not against
    # Auto-class registrations) and logs an error "model not supported" otherwise. The entry is only ever read by
    # name: lookups of CATSegConfig in the Auto mapping are answered by the registration above, and the table's
    # "catseg" key is skipped when iterating it because transformers' own config table has no "catseg" type.
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(
        CATSegConfig.model_type, CATSegForSemanticSegmentation.__name__
    )


__all__ = [
    "ZERO_SHOT_IMAGE_SEGMENTATION_TASK",
    "ZeroShotImageSegmentationPipeline",
    "default_vocabulary",
    "label_map_to_annotations",
    "register_pipelines",
    "set_default_vocabulary",
]
