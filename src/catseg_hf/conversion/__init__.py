"""Conversion of official CAT-Seg (detectron2) checkpoints into `CATSegForSemanticSegmentation` folders.

The official checkpoints hold OpenAI-CLIP tensors under `sem_seg_head.predictor.clip_model.` (each attention with
separate q/k/v weights but one concatenated in-projection bias), the aggregator under
`sem_seg_head.predictor.transformer.` and the two guidance upsamplers at the top level.

Every bad input stops the conversion with a [`ConversionError`] whose message is one line saying what was wrong and
what to do: a checkpoint that is missing, empty, truncated, not a checkpoint at all, a pickle of anything but
tensors (never unpickled: the file is read with `torch.load(..., weights_only=True)`), a tensor with the wrong shape
or with NaN/Inf values; an official config that is not JSON or holds impossible values; a BPE file that cannot be
read; an output folder that is not empty (without `overwrite`) or cannot be written. All arguments are checked before
the checkpoint is read, and a folder is written into a temporary folder next to the output and moved into place only
once complete, so a failed conversion leaves nothing at the output and never touches an existing folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..configuration_catseg import CATSegConfig
from ..modeling_catseg import CATSegForSemanticSegmentation
from .checkpoint_files import _checkpoint_format, load_official_state_dict
from .errors import CheckpointMismatchError, ConversionError, _check_input_file, _reason, _show
from .official_config import _check_variant, _config_from_official, _read_official_config, config_from_official
from .official_config import infer_clip_config
from .output_folder import _check_bpe_file, _check_output_dir, _StagedFolder
from .tensor_mapping import AGGREGATOR_PREFIX, CLIP_PREFIX, convert_official_state_dict

logger = logging.getLogger(__name__)


def convert_official_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    variant: str | None = None,
    official_config: str | Path | dict | None = None,
    model_card: str | Callable[[CATSegConfig], str] | None = None,
    bpe_path: str | Path | None = None,
    overwrite: bool = False,
) -> CATSegForSemanticSegmentation:
    """Converts an official CAT-Seg checkpoint into a `CATSegForSemanticSegmentation` and, with `output_dir`, saves it
    (`save_pretrained`, safetensors) together with the modelling code (loadable with `trust_remote_code=True`).

    Every argument is checked before the checkpoint is read. The folder is written into a temporary folder next to
    `output_dir` and moved into place when complete: on any failure nothing is left at `output_dir`, and a folder
    that was there is untouched.

    Args:
        checkpoint (`str | Path`):
            `.pth` (detectron2) or `.safetensors` file.
        output_dir (`str | Path`, *optional*):
            Where to save the model folder; it must not exist, be empty, or (with `overwrite`) be replaced.
        variant (`str`, *optional*):
            `"base"` or `"large"` preset for the hyperparameters that cannot be read off tensor shapes
            (inferred from the CLIP width when omitted).
        official_config (`str | Path | dict`, *optional*):
            Path to, or content of, an official config JSON in the fixtures' `config.json` format.
        model_card (`str | Callable[[CATSegConfig], str]`, *optional*):
            Text written as the folder's `README.md`, or a function of the converted config that returns it.
        bpe_path (`str | Path`, *optional*):
            CLIP BPE merges file (`bpe_simple_vocab_16e6.txt.gz`): also saves the `CATSegProcessor` (image
            processor and tokenizer), so the folder is complete for `AutoProcessor` and `pipeline(...)`.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir` (only once the new folder is complete). It may not hold an
            input of the conversion.

    Returns:
        The converted model, in eval mode.

    Raises:
        `ConversionError`: a bad argument (the message names it and says what to do); `CheckpointMismatchError`
            (a subclass) when the tensors do not fit the model.
    """
    # 1. Every argument, before any work.
    _check_variant(variant)
    checkpoint = _check_input_file(checkpoint, "checkpoint")
    _checkpoint_format(checkpoint)
    official_config_path = Path(official_config) if isinstance(official_config, (str, os.PathLike)) else None
    official_config, config_source = _read_official_config(official_config)
    if output_dir is None and (bpe_path is not None or model_card is not None):
        raise ConversionError("bpe_path and model_card are written into the saved folder: they need an output_dir.")
    if bpe_path is not None:
        bpe_path = _check_bpe_file(bpe_path)
    staged = None
    if output_dir is not None:
        inputs = [("checkpoint", checkpoint)]
        if official_config_path is not None:
            inputs.append(("official config", official_config_path))
        if bpe_path is not None:
            inputs.append(("BPE file", bpe_path))
        staged = _StagedFolder(_check_output_dir(output_dir, overwrite, inputs), overwrite)
        staged.create()
    try:
        # 2. The conversion, in memory.
        state_dict = load_official_state_dict(checkpoint)
        config = _config_from_official(state_dict, variant, official_config, config_source)
        converted = convert_official_state_dict(state_dict, config)
        model = CATSegForSemanticSegmentation(config)
        model.load_state_dict(converted, strict=True)
        model.eval()
        if staged is None:
            return model
        # 3. The folder, written in the temporary folder and then moved into place.
        try:
            model.save_pretrained(staged.path)
            card = model_card(config) if callable(model_card) else model_card
            if card is not None:
                (staged.path / "README.md").write_text(card, encoding="utf-8")
            if bpe_path is not None:
                from ..processing_catseg import CATSegProcessor

                CATSegProcessor.from_model_config(config, bpe_path=bpe_path).save_pretrained(staged.path)
        except OSError as error:
            raise ConversionError(
                f"Writing the converted model failed ({_reason(error)}): nothing was written to "
                f"{_show(staged.output)}; check the free space and permissions there."
            ) from None
        staged.commit()
        return model
    except BaseException:
        if staged is not None:
            staged.discard()
        raise


__all__ = [
    "AGGREGATOR_PREFIX",
    "CLIP_PREFIX",
    "CheckpointMismatchError",
    "ConversionError",
    "config_from_official",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "infer_clip_config",
    "load_official_state_dict",
]
