#!/usr/bin/env python
"""Train CAT-Seg with `transformers.Trainer`, following the official recipe.

Usage:
    python scripts/train.py RECIPE.yaml [--key value ...]
    python scripts/train.py --model_preset base --clip_model_name_or_path openai/clip-vit-base-patch16 ...

The recipe (YAML or JSON) holds argument names and values; command-line options override it. Arguments are the
fields of `catseg_hf.training.ModelArguments`, `DataArguments` and `CATSegTrainingArguments` (the latter is
`transformers.TrainingArguments` with the official CAT-Seg optimisation settings as defaults); `--help` lists them.

The same command runs on one device or many:
    python scripts/train.py recipes/catseg_base_coco_stuff.yaml
    torchrun --nproc_per_node 4 scripts/train.py recipes/catseg_base_coco_stuff.yaml --per_device_train_batch_size 1
    accelerate launch --multi_gpu --num_processes 4 scripts/train.py recipes/catseg_base_coco_stuff.yaml \
        --per_device_train_batch_size 1

On Linux the script first restarts itself once under the CPU allocator settings of `catseg_hf.cpu_allocator` (freed
memory reused, huge pages: a faster training step on CPUs); `CATSEG_CPU_ALLOCATOR=default` skips that.

The output folder is a `save_pretrained` model folder with the processor (tokenizer included) and the modelling code,
loadable with `AutoModel.from_pretrained(folder)` (`trust_remote_code=True` where catseg_hf is not installed).
"""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    import datasets
    import transformers
    from transformers import set_seed

    from catseg_hf.training import parse_recipe_and_overrides, run_training

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        from transformers import HfArgumentParser

        from catseg_hf.training import CATSegTrainingArguments, DataArguments, ModelArguments

        HfArgumentParser((ModelArguments, DataArguments, CATSegTrainingArguments)).print_help()
        return 0
    model_args, data_args, training_args = parse_recipe_and_overrides(argv)

    # Logging as in transformers' example scripts: info on the main process, warnings elsewhere.
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logging.getLogger("catseg_hf").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()

    set_seed(training_args.seed)
    run_training(model_args, data_args, training_args)
    return 0


def _finish_distributed() -> bool:
    """Tears the process group down; returns whether this was a multi-process run."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it
        return False
    if not (dist.is_available() and dist.is_initialized()):
        return False
    multi = dist.get_world_size() > 1
    dist.barrier()
    dist.destroy_process_group()
    return multi


if __name__ == "__main__":
    # Before any work: the CPU allocator's settings are read at process start (catseg_hf.cpu_allocator).
    from catseg_hf.cpu_allocator import reexec_with_tuned_allocator

    reexec_with_tuned_allocator()
    status = main()
    if _finish_distributed():
        # Worker processes of a CPU (gloo) data-parallel run were seen to abort (SIGABRT) while the interpreter shut
        # down, after all work was done; everything is saved and the process group is gone, so leave without the
        # interpreter's teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
