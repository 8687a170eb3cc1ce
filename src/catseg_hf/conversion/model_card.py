"""Model cards of converted checkpoints, built with `huggingface_hub.ModelCard` / `ModelCardData`.

The released models' cards (`model_cards/catseg-{base,large}.md`) and the plain card of any other geometry.

The released cards' `model-index` holds the mIoU the CAT-Seg paper publishes (Cho et al., CVPR 2024; the official
README table), read from the benchmark registry (`evaluation.benchmarks`), with the registry's Hub dataset id where
it has one. catseg-hf does not measure these numbers. `scripts/write_model_cards.py` writes the shipped files, and a
test checks that they equal what [`released_model_card`] builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..configuration_catseg import PRESETS, released_variant
from ..evaluation.benchmarks import BENCHMARKS, PAPER_BENCHMARKS


#: Where the released models' cards are shipped (`catseg-base.md`, `catseg-large.md`).
MODEL_CARDS_DIR = Path(__file__).resolve().parents[3] / "model_cards"

_TASK_NAME = "Open-vocabulary semantic segmentation"
_METRIC_NAME = "mIoU (published in the CAT-Seg paper; not measured by catseg-hf)"
# What the card of each released model says that the configuration presets do not hold.
_RELEASED = {
    "base": {
        "title": "CAT-Seg base (CLIP ViT-B/16)",
        "backbone": "CLIP ViT-B/16",
        "base_model": "openai/clip-vit-base-patch16",
        "checkpoint": "model_base.pth",
    },
    "large": {
        "title": "CAT-Seg large (CLIP ViT-L/14@336px)",
        "backbone": "CLIP ViT-L/14@336px",
        "base_model": "openai/clip-vit-large-patch14-336",
        "checkpoint": "model_large.pth",
    },
}

_BODY = """
# {title}

CAT-Seg (Cho et al., "CAT-Seg: Cost Aggregation for Open-Vocabulary Semantic Segmentation", CVPR 2024) labels
every pixel of an image with one of any list of class names you give it. It computes a cost volume between dense
CLIP image embeddings and the class-name text embeddings and refines it with spatial (Swin) and class (linear
attention) aggregation, then upsamples it with guidance from intermediate CLIP features.

This folder is the **official released checkpoint `{checkpoint}`** converted to Hugging Face Transformers by
catseg-hf (`scripts/convert_official_checkpoint.py`); the conversion is checked tensor by
tensor against outputs of the official implementation. Weights are the authors'; the code is catseg-hf's.

- Backbone: {backbone}, run at {resolution}x{resolution} px (24x24 patch grid); decoder guidance from vision blocks {guidance}.
- Aggregator: cost embedding 1->128 (7x7), 2 aggregation layers (Swin window 12, linear class attention, 4 heads),
  upsampling decoder 128->64->32, logits at 96x96.
- Prompt template: `A photo of a {{}} in the scene` (one template).
- CLIP fine-tuning: query and value projection weights of both towers ("attention" mode).

## Training data

COCO-Stuff-164k train (171 classes), 80k iterations, batch 4, 384x384 crops, AdamW lr 2e-4 (CLIP x0.01),
weight decay 1e-4, cosine schedule, gradient clipping 0.01 (the official recipe).

## Results (mIoU: the CAT-Seg paper's published numbers; not measured by catseg-hf)

These are the numbers the authors publish in the CAT-Seg paper (and the official README table), copied here; the
`model-index` above holds the same values.

| {header} |
|{rule}|
| {values} |

These use the official protocol: shorter side resized to 640, sliding window (640x640 canvas, 384 tiles, stride
256, plus a global view), no class-aggregation pooling.

## Usage

```python
import catseg_hf  # registers the catseg model type (or pass trust_remote_code=True)
from PIL import Image
from transformers import AutoModelForSemanticSegmentation, AutoProcessor

model = AutoModelForSemanticSegmentation.from_pretrained("path/to/{name}").eval()
processor = AutoProcessor.from_pretrained("path/to/{name}")
image = Image.open("room.jpg").convert("RGB")
names = ["wall", "floor", "sofa", "window", "plant"]
inputs = processor(images=image, text=names, mode="sliding", return_tensors="pt")
outputs = model(**inputs)  # logits (1, 5 views, 5 classes, 96, 96): the image's views stay in its row
label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0]
```

Or `pipeline("zero-shot-image-segmentation", model="path/to/{name}")(image, candidate_labels=names)`,
or `catseg-hf segment room.jpg --labels "wall,floor,sofa" --model path/to/{name} --out out/`.

## Limitations

- Text embeddings are computed for every class name; hundreds of classes cost seconds on CPU. The pipeline and the
  CLI embed a vocabulary once and reuse it for every image (`catseg_hf.vocabulary.Vocabulary`).
- With more than 256 classes, each view keeps only the 256 classes whose best cost is highest; the others get
  logit -100 in that view (as in the official implementation).
- Trained on COCO-Stuff classes; quality on very different vocabularies or domains varies, and CLIP's biases apply.

## Citation

```bibtex
@inproceedings{{cho2024catseg,
  title     = {{CAT-Seg: Cost Aggregation for Open-Vocabulary Semantic Segmentation}},
  author    = {{Cho, Seokju and Shin, Heeseong and Hong, Sunghwan and Arnab, Anurag and Seo, Paul Hongsuck and Kim, Seungryong}},
  booktitle = {{Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)}},
  year      = {{2024}}
}}
```
"""


def _eval_results(variant: str) -> list[EvalResult]:
    """One `EvalResult` per benchmark of the paper's table: the published mIoU of `variant`, on the registry's Hub
    dataset where it names one (else the registry key as the dataset type)."""
    results = []
    for key in PAPER_BENCHMARKS:
        benchmark = BENCHMARKS[key]
        hub = benchmark.hub
        results.append(
            EvalResult(
                task_type="image-segmentation",
                task_name=_TASK_NAME,
                dataset_type=hub.dataset_id if hub is not None else key,
                dataset_name=f"{benchmark.display_name}: {benchmark.description}",
                dataset_config=hub.config if hub is not None else None,
                dataset_split=hub.split if hub is not None else None,
                metric_type="mean_iou",
                metric_value=benchmark.reported_miou(variant),
                metric_name=_METRIC_NAME,
            )
        )
    return results


def released_model_card(variant: str) -> ModelCard:
    """The model card of the released CAT-Seg model `variant` (`"base"` or `"large"`).

    Args:
        variant (`str`):
            `"base"` (CLIP ViT-B/16) or `"large"` (CLIP ViT-L/14@336px).

    Returns:
        `huggingface_hub.ModelCard`: metadata (with a `model-index` of the paper's mIoU) and text.
    """
    if variant not in _RELEASED:
        raise ValueError(f"variant must be one of {sorted(_RELEASED)}, got {variant!r}.")
    facts: dict[str, Any] = dict(_RELEASED[variant])
    name = f"catseg-{variant}"
    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license="mit",
        tags=["catseg", "clip", "open-vocabulary-segmentation", "semantic-segmentation", "zero-shot-image-segmentation"],
        datasets=["coco-stuff"],
        metrics=["mean_iou"],
        base_model=facts.pop("base_model"),
        model_name=name,
        eval_results=_eval_results(variant),
    )
    columns = [BENCHMARKS[key].display_name for key in PAPER_BENCHMARKS]
    body = _BODY.format(
        name=name,
        resolution=PRESETS[variant]["clip_resolution"],
        guidance=PRESETS[variant]["guidance_layer_indices"],
        header=" | ".join(columns),
        rule="|".join("---" for _ in columns),
        values=" | ".join(f"{BENCHMARKS[key].reported_miou(variant):.1f}" for key in PAPER_BENCHMARKS),
        **facts,
    )
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n{body}")


def model_card_for(config: Any, variant: str | None = None) -> str:
    """The card text for a converted checkpoint: the released model's card when `config` has that model's geometry
    (and `variant`, if given, names it), else a plain description without benchmark numbers.

    Args:
        config ([`CATSegConfig`]):
            The converted model's configuration.
        variant (`str`, *optional*):
            The `--variant` the conversion was asked for.
    """
    released = released_variant(config)
    if released is not None and variant in (None, released):
        return str(released_model_card(released))
    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license="mit",
        tags=["catseg", "open-vocabulary-segmentation"],
    )
    vision = config.clip_config.vision_config
    return (
        f"---\n{metadata.to_yaml()}\n---\n\n# CAT-Seg (converted checkpoint)\n\n"
        f"A CAT-Seg checkpoint converted with catseg-hf: CLIP vision width {vision.hidden_size}, "
        f"{vision.num_hidden_layers} layers, patch {vision.patch_size}, run at {config.clip_resolution} px. "
        "It does not have the geometry of a released model; no benchmark numbers apply to it.\n"
    )


def write_model_cards(folder: str | Path = MODEL_CARDS_DIR) -> list[Path]:
    """Writes `catseg-base.md` and `catseg-large.md` into `folder` (the shipped `model_cards/` by default).

    Args:
        folder (`str` or `Path`, *optional*, defaults to the repository's `model_cards/`):
            Where to write the cards.

    Returns:
        `list[Path]`: the files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for variant in _RELEASED:
        path = folder / f"catseg-{variant}.md"
        path.write_text(str(released_model_card(variant)))
        written.append(path)
    return written


__all__ = ["MODEL_CARDS_DIR", "model_card_for", "released_model_card", "write_model_cards"]
