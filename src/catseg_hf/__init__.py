"""catseg-hf: CAT-Seg open-vocabulary semantic segmentation for Hugging Face Transformers.

Importing the package registers the `catseg` model type with transformers' Auto classes, so that
`AutoConfig`, `AutoModel` (and, with the processing classes, `AutoImageProcessor` / `AutoProcessor`) load
CAT-Seg folders without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation

from .configuration_catseg import CATSegConfig
from .modeling_catseg import (
    CATSegForSemanticSegmentation,
    CATSegImageFeatures,
    CATSegModel,
    CATSegOutput,
    CATSegPreTrainedModel,
    CATSegSemanticSegmenterOutput,
)

__version__ = "0.1.0"

AutoConfig.register(CATSegConfig.model_type, CATSegConfig, exist_ok=True)
AutoModel.register(CATSegConfig, CATSegModel, exist_ok=True)
AutoModelForSemanticSegmentation.register(CATSegConfig, CATSegForSemanticSegmentation, exist_ok=True)

# Processing classes. Registered for both image-processor backends, since ours does its own torch arithmetic whatever
# backend transformers picks. (Each class's `_auto_class` makes `save_pretrained` copy its file into the folder, so
# that the folder also loads with `trust_remote_code=True` where catseg_hf is not installed.)
from transformers import AutoImageProcessor, AutoProcessor  # noqa: E402

from .image_processing_catseg import CATSegImageProcessor  # noqa: E402
from .processing_catseg import CATSegProcessor  # noqa: E402
from .tokenization import build_clip_tokenizer  # noqa: E402

AutoImageProcessor.register(
    CATSegConfig,
    image_processor_classes={"torchvision": CATSegImageProcessor, "pil": CATSegImageProcessor},
    exist_ok=True,
)
AutoProcessor.register(CATSegConfig, CATSegProcessor, exist_ok=True)

# Pipelines: the "zero-shot-image-segmentation" task, and the built-in "image-segmentation" one.
from .pipelines import ZeroShotImageSegmentationPipeline, register_pipelines, set_default_vocabulary  # noqa: E402

register_pipelines()

__all__ = ["CATSegConfig", "CATSegForSemanticSegmentation", "CATSegModel", "CATSegPreTrainedModel"]
__all__ += ["CATSegSemanticSegmenterOutput", "CATSegOutput", "CATSegImageFeatures"]
__all__ += ["CATSegImageProcessor", "CATSegProcessor", "build_clip_tokenizer"]
__all__ += ["ZeroShotImageSegmentationPipeline", "set_default_vocabulary"]
