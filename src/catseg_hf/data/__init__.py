"""Data layer for CAT-Seg training and evaluation: re-exports the public names of its modules.

* [`.synthetic`] -- a small learnable synthetic benchmark (coloured shapes) for offline tests;
* [`.loading`] -- lazily load segmentation datasets (Hub, parquet, `save_to_disk`, image/mask
  folders, CAT-Seg's official folder layouts) with standard `image` / `label` columns;
* [`.folders`] -- pair image and mask folders by file stem;
* [`.labels`] -- label remapping on access (`reduce_labels`, `label_map` with the hub `mean_iou` meaning);
* [`.dataset_class_names`] -- class names read from datasets (the entry point is `load_class_names`, whose home is
  the benchmark registry `catseg_hf.evaluation.benchmarks`, like `OFFICIAL_LAYOUTS`);
* [`.transforms`] -- the official training augmentation and evaluation resizing;
* [`.collator`] -- batch examples into `pixel_values` / `labels` + class-prompt tokens.

Typical training use::

    from catseg_hf.data import (
        CATSegTrainingCollator, TrainTransform, add_transform, load_class_names, load_segmentation_dataset,
    )

    train = load_segmentation_dataset("/data", split="train", layout="coco_stuff")
    train = add_transform(train, TrainTransform(seed=0))
    collator = CATSegTrainingCollator(class_token_inputs)  # tokens from the processor
"""

from .collator import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, CATSegTrainingCollator, pad_and_resize_images
from .loading import (
    OFFICIAL_LAYOUTS,
    LabelRemapper,
    OfficialLayout,
    add_transform,
    coco_stuff_raw_label_map,
    load_class_names,
    load_image_mask_folders,
    load_segmentation_dataset,
    pair_files_by_stem,
    remap_labels,
)
from .synthetic import make_synthetic_dataset, render_scene, synthetic_class_names
from .transforms import (
    EvalTransform,
    TrainTransform,
    color_aug_ssd,
    resize_shortest_edge,
    train_transform,
)

__all__ = [
    "CLIP_PIXEL_MEAN",
    "CLIP_PIXEL_STD",
    "CATSegTrainingCollator",
    "pad_and_resize_images",
    "OFFICIAL_LAYOUTS",
    "OfficialLayout",
    "LabelRemapper",
    "add_transform",
    "coco_stuff_raw_label_map",
    "load_class_names",
    "load_image_mask_folders",
    "load_segmentation_dataset",
    "pair_files_by_stem",
    "remap_labels",
    "make_synthetic_dataset",
    "render_scene",
    "synthetic_class_names",
    "EvalTransform",
    "TrainTransform",
    "color_aug_ssd",
    "resize_shortest_edge",
    "train_transform",
]
