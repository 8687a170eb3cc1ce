#!/usr/bin/env python
"""Time and measure CAT-Seg inference and training steps, each case in its own process so that its peak memory,
CPU time and page faults are its own.

    python scripts/make_random_checkpoint.py --variant base --output random-catseg-base
    python scripts/benchmark.py --model random-catseg-base [--cases text150,whole150,...] [--runs 5] [--threads 2] \
        [--dtype float32|bfloat16] [--flops] [--background-load N] [--json results.json]
    python scripts/benchmark.py --quick [--cases ...]      # tiny random model, tiny inputs (smoke test, seconds)

Cases (one 512x683 RGB image for the inference cases):
- text150 / text847: class text embeddings of 150 / 847 class names (one template), recomputed every run;
- whole150: whole-image inference with 150 classes (text embeddings cached): processor, model, post-processing;
- slide150 / slide847: the paper's sliding-window protocol (4 tiles + a global view in one batch), 150 / 847
  classes (847 exercises the top-256 path), text cached, post-processing to a label map included;
- train171: one training step (forward with the loss + backward + the gradient clipping of the official recipe,
  `max_grad_norm=0.01`, + one AdamW step) on a batch of 2 random 384x384 crops with random labels in [0, 171) and
  some 255 (ignore) pixels, 171 classes (COCO-Stuff's names), the model in train mode with
  `config.clip_finetune="attention"` (`apply_clip_finetune_policy`) and the optimizer built over the project's
  official parameter groups (`catseg_hf.training.optim.build_optimizer`, as `CATSegTrainer` does). The batch is made
  once by `CATSegTrainingCollator` (pixel_values + labels + the tokenised class names, as in training); the text
  tower runs (and trains) in every step;
- train171-checkpointing: the same with `model.gradient_checkpointing_enable()` (`activation_checkpointing_enable()`,
  its newer name, where transformers has it).

Class names come from the package's benchmark lists (`catseg_hf.evaluation.load_class_names`: ADE-150, ADE-847,
COCO-Stuff; `$CATSEG_SHARED_DIR/benchmarks` when that is set), else synthetic names. Each case warms up once, then
runs `--runs` times. Reported per case: median/min/max seconds per run; the CPU time (user and system seconds) and the
page faults (minor and major) per run of the timed runs only (`getrusage(RUSAGE_SELF)` differences around the timed
loop, in the case's own process: all its threads); and the peak resident memory of the case's process (which
includes the loaded model, and for training the gradients and optimizer state).

Options:
  --model DIR             a model folder with its processor (scripts/make_random_checkpoint.py --variant base
                          --output DIR); required unless --quick.
  --cases LIST            comma-separated case names (default: all inference cases; the training cases are opt-in).
                          An unknown name is an error.
  --runs N                timed runs per case after the one warm-up (default 5; 1 with --quick).
  --threads N             torch threads of each case's process (default 2).
  --dtype                 float32 (default) or bfloat16 (`torch.autocast("cpu", dtype=torch.bfloat16)` around the
                          model calls; float32 weights).
  --cpu-allocator         tuned (default): every case process starts under `catseg_hf.cpu_allocator`'s settings, the
                          ones `scripts/train.py` restarts itself under (freed memory stays in the process for the
                          next tensor, large tensors on transparent huge pages; variables already set are kept);
                          default: the environment as it is. Each result records the settings its process ran with.
  --flops                 for the inference cases, count the FLOPs of one extra (untimed) run per part with
                          `torch.utils.flop_counter.FlopCounterMode` (it counts the aten ops that actually run, so the
                          tiled no-grad CPU kernels; with formulas added for the CPU ops it does not know: oneDNN's
                          fused linear layers and CPU attention, `cpu_kernel_flop_formulas`): CLIP text tower (text
                          cases), CLIP vision tower, cost volume and glue of the model's forward, aggregator (cost
                          embedding, guidance projections, spatial and class aggregation), decoder (upsampling stages
                          and head), and the rest outside the model (processor, post-processing). Each part is then
                          timed inside the timed runs (median over runs) by timing wrappers installed on the case's own
                          model instance only, and removed afterwards; reported: GFLOP, seconds and achieved GFLOP/s per
                          part, next to this machine's float32 matmul rate (`torch.mm` of two 2048x2048 float32 matrices
                          with the same thread count, best of 3, 2*n^3/t; n=512 with --quick; probed before and after
                          the timed runs, the faster probe counts) and each part's time over its floor (its FLOPs at
                          that rate). The counting run also times the ops that carry the FLOPs (matrix products,
                          convolutions, attention: the ops FlopCounterMode counts) per part: what the library's kernels
                          take for this work alone, against the same floor. That run executes the tiles inline (a
                          dispatch mode is thread-local), each op on all the case's threads: with --threads 1 it is the
                          timed path op for op. A second table splits those ops by kind (products, convolutions,
                          attention: `flop_op_kind`) per part, each with its GFLOP/s and its seconds over its floor,
                          which says which kind of kernel the distance to the floor is in. Ignored for the training
                          cases.
  --background-load N     run every case twice: quiet first, then again while N busy-loop processes (pure Python
                          spin loops, one process each, each a full CPU hog) run on this machine; both figures are
                          reported side by side (with the slowdown). Each busy loop stops by itself at its deadline
                          or as soon as this script's process is gone, and this script terminates all of them when
                          the loaded case ends, on error and on Ctrl-C/SIGTERM. Their pids, the CPU time they got
                          and whether they were still running when the case ended are in the JSON. 0 (default):
                          quiet only.
  --background-deadline S seconds after which each busy loop stops by itself (default: 3x the quiet case's total
                          time + 60 s; 2x + 5 s with --quick).
  --quick                 smoke-test mode: without --model, builds a tiny random model (catseg_hf.testing_utils,
                          tokenizer from the shared BPE file) in a temporary folder; 96x128 image, 12 classes
                          (20 for the 847-class cases, above the tiny model's pad_len), training crops at the tiny
                          model's 64 px, 1 run unless --runs is given.
  --json PATH             also write all results to PATH: one row per case and condition ("quiet"/"loaded") with
                          median_s/min_s/max_s, cpu_user_s/cpu_sys_s and minor_faults/major_faults (per timed run),
                          peak_rss_gb, and where they apply "flops" (per part), "background_load" (pids, deadline,
                          alive_at_end, cpu_s of each busy loop) and "slowdown_vs_quiet".

A case process is killed by the kernel if the driver dies (PR_SET_PDEATHSIG, Linux), so none outlives it either.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> (kind, number of classes, mode)
CASES = {
    "text150": ("text", 150, None),
    "text847": ("text", 847, None),
    "whole150": ("image", 150, "whole"),
    "slide150": ("image", 150, "sliding"),
    "slide847": ("image", 847, "sliding"),
    "train171": ("train", 171, None),
    "train171-checkpointing": ("train", 171, "checkpointing"),
}
DEFAULT_CASES = [name for name, (kind, _, _) in CASES.items() if kind != "train"]
BENCHMARK_FOR_COUNT = {150: "ade150", 847: "ade847", 171: "coco_stuff"}
QUICK_CLASSES = {150: 12, 847: 20, 171: 12}
IMAGE_SIZE = (512, 683)
QUICK_IMAGE_SIZE = (96, 128)
TRAIN_BATCH = 2
TRAIN_CROP = 384
IGNORE_INDEX = 255
# The official recipe's settings (CATSegTrainingArguments defaults): AdamW lr 2e-4, weight decay 1e-4, clip 0.01.
LEARNING_RATE, WEIGHT_DECAY, MAX_GRAD_NORM = 2e-4, 1e-4, 0.01
PARTS = ("clip_text", "clip_vision", "cost_volume_and_glue", "aggregator", "decoder", "outside_model")
FLOP_OP_KINDS = ("products", "convolutions", "attention")

# One busy loop per process: spins until its deadline (wall clock) or until its parent is gone.
BUSY_LOOP = """
import os, sys, time
deadline, parent = float(sys.argv[1]), int(sys.argv[2])
while time.time() < deadline:
    for _ in range(20000):
        pass
    if os.getppid() != parent:
        break
"""


def class_names(count: int, quick: bool) -> list[str]:
    names = None
    try:
        from catseg_hf.evaluation import load_class_names

        names = load_class_names(BENCHMARK_FOR_COUNT[count])
    except (ImportError, KeyError, OSError, ValueError):
        names = None
    if names is None or len(names) != count:
        names = [f"object number {i}" for i in range(count)]
    return names[: QUICK_CLASSES[count]] if quick else names


def rusage_snapshot() -> dict:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": usage.ru_utime, "sys": usage.ru_stime, "minflt": usage.ru_minflt, "majflt": usage.ru_majflt}


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------------ per-part accounting
class PartRecorder:
    """Exclusive time (and FLOPs under a FlopCounterMode, the time of its FLOP-counted ops under a `FlopOpTimer`)
    per part of the model, on one model instance.

    The model forward and the aggregator get forward pre/post hooks; `get_image_features`, `get_class_embeddings` and
    `aggregator.decode` get instance-attribute wrappers (they are methods, not modules). Everything is removed by
    `remove()`. Work is attributed to the innermost active part; outside the model it goes to `outside_model`."""

    def __init__(self, model):
        self.model = model
        self.counter = None
        self.stack = ["outside_model"]
        self.op_timer = None
        self.seconds: dict[str, float] = {}
        self.by_kind: dict[str, dict[str, list]] = {}  # part -> FLOP op kind -> [FLOPs, seconds of its ops]
        self._last_time = time.perf_counter()
        self._last_kind_totals = self._kind_totals()
        self._handles = []
        self._wrapped = []
        for module, part in ((model, "cost_volume_and_glue"), (model.aggregator, "aggregator")):
            self._handles.append(module.register_forward_pre_hook(lambda *_, part=part: self.enter(part)))
            self._handles.append(module.register_forward_hook(lambda *_: self.exit()))
        for owner, name, part in (
            (model, "get_image_features", "clip_vision"),
            (model, "get_class_embeddings", "clip_text"),
            (model.aggregator, "decode", "decoder"),
        ):
            self._wrap(owner, name, part)

    def _wrap(self, owner, name, part):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            self.enter(part)
            try:
                return original(*args, **kwargs)
            finally:
                self.exit()

        setattr(owner, name, wrapper)
        self._wrapped.append((owner, name))

    def remove(self):
        for handle in self._handles:
            handle.remove()
        for owner, name in self._wrapped:
            delattr(owner, name)  # the instance attribute; the class's method shows again
        self._handles, self._wrapped = [], []

    @property
    def flops(self) -> dict[str, int]:
        """FLOPs counted per part."""
        return {part: sum(flops for flops, _ in kinds.values()) for part, kinds in self.by_kind.items()}

    @property
    def flop_op_seconds(self) -> dict[str, float]:
        """Seconds of the FLOP-counted ops per part."""
        return {part: sum(seconds for _, seconds in kinds.values()) for part, kinds in self.by_kind.items()}

    def _kind_totals(self) -> dict[str, tuple[int, float]]:
        """FLOPs counted and seconds timed so far, per kind of FLOP op."""
        totals = {kind: [0, 0.0] for kind in FLOP_OP_KINDS}
        if self.counter is not None:
            for op, flops in self.counter.flop_counts.get("Global", {}).items():
                totals[flop_op_kind(op)][0] += flops
        if self.op_timer is not None:
            for kind, seconds in self.op_timer.seconds_by_kind.items():
                totals[kind][1] += seconds
        return {kind: tuple(total) for kind, total in totals.items()}

    def _flush(self):
        now = time.perf_counter()
        kind_totals = self._kind_totals()
        part = self.stack[-1]
        self.seconds[part] = self.seconds.get(part, 0.0) + now - self._last_time
        kinds = self.by_kind.setdefault(part, {kind: [0, 0.0] for kind in FLOP_OP_KINDS})
        for kind, (flops, seconds) in kind_totals.items():
            last_flops, last_seconds = self._last_kind_totals[kind]
            kinds[kind][0] += flops - last_flops
            kinds[kind][1] += seconds - last_seconds
        self._last_time, self._last_kind_totals = now, kind_totals

    def enter(self, part):
        self._flush()
        self.stack.append(part)

    def exit(self):
        self._flush()
        self.stack.pop()

    def start(self, counter=None, op_timer=None):
        self.counter, self.op_timer = counter, op_timer
        self.stack = ["outside_model"]
        self.seconds, self.by_kind = {}, {}
        self._last_time = time.perf_counter()
        self._last_kind_totals = self._kind_totals()

    def stop(self):
        self._flush()
        self.counter, self.op_timer = None, None


def flop_op_kind(op) -> str:
    """The kind of a FLOP-counted op (an op overload packet, as `FlopCounterMode.flop_counts` keys them), one of
    `FLOP_OP_KINDS`: attention (`scaled_dot_product_attention`'s kernels), convolutions (transposed ones too), or
    products (mm, addmm, bmm, baddbmm, oneDNN's fused linear layers)."""
    name = str(op).split(".")[-1]
    if "attention" in name:
        return "attention"
    if "convolution" in name:
        return "convolutions"
    return "products"


def flop_op_timer(flop_ops):
    """A torch dispatch mode that sums the wall time of the ops in `flop_ops` (the ops FlopCounterMode counts: the
    matrix products, convolutions and attention: `FlopCounterMode.flop_registry`) in `.seconds`, and per kind of op
    ([`flop_op_kind`]) in `.seconds_by_kind`; other ops pass through untimed. Entered below the FlopCounterMode, so
    that the counter's own bookkeeping is not timed."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class FlopOpTimer(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seconds_by_kind: dict[str, float] = {}

        @property
        def seconds(self) -> float:
            return sum(self.seconds_by_kind.values())

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket not in flop_ops:
                return func(*args, **(kwargs or {}))
            start = time.perf_counter()
            try:
                return func(*args, **(kwargs or {}))
            finally:
                kind = flop_op_kind(func.overloadpacket)
                self.seconds_by_kind[kind] = self.seconds_by_kind.get(kind, 0.0) + time.perf_counter() - start

    return FlopOpTimer()


def cpu_kernel_flop_formulas() -> dict:
    """FlopCounterMode formulas for the CPU ops of our inference path that torch's counter does not know:
    - `mkldnn._linear_pointwise` (a linear layer with bias and activation fused, the inference kernels' products) and
      its `.binary` overload (with a tensor added in the output pass) cost their product's 2 M K N: the output's M N
      elements times the input's K;
    - `aten._scaled_dot_product_flash_attention_for_cpu`, what `scaled_dot_product_attention` runs on CPU (the Swin
      windows, CLIP's vision and text attention), costs what torch counts for its other attention kernels: the two
      batched products, query by keys and weights by values."""
    import math

    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    from catseg_hf.catseg_kernels import HAS_ONEDNN_LINEAR

    def linear_pointwise_flops(input_shape, *args, out_shape, **kwargs) -> int:
        return 2 * math.prod(out_shape) * input_shape[-1]

    def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    formulas = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops}
    if HAS_ONEDNN_LINEAR:
        formulas[torch.ops.mkldnn._linear_pointwise] = linear_pointwise_flops
    return formulas


def matmul_gflops(n: int) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------------------------------------ one case
def build_step(args, model, processor, names):
    """The function timed once per run, for the case's kind."""
    import numpy as np
    import torch

    kind, _, mode = CASES[args.case]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    rng = np.random.default_rng(0)
    text = processor(text=names, return_tensors="pt")

    if kind == "text":

        def step():
            with torch.no_grad(), autocast:
                model.get_class_embeddings(text["input_ids"], text["attention_mask"])

        return step

    if kind == "image":
        image = rng.integers(0, 256, size=(*(QUICK_IMAGE_SIZE if args.quick else IMAGE_SIZE), 3), dtype=np.uint8)
        with torch.no_grad(), autocast:
            class_embeddings = model.get_class_embeddings(text["input_ids"], text["attention_mask"])

        def step():
            inputs = processor(images=image, mode=mode, return_tensors="pt")
            with torch.no_grad(), autocast:
                outputs = model(**inputs, class_embeddings=class_embeddings)
            processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])

        return step

    # Training step: official CLIP fine-tuning policy, parameter groups and AdamW, as CATSegTrainer builds them.
    from catseg_hf.data.collator import CATSegTrainingCollator
    from transformers import Trainer, TrainingArguments

    from catseg_hf.training.optim import apply_clip_finetune_policy, build_optimizer

    model.config.clip_finetune = "attention"
    apply_clip_finetune_policy(model, "attention")
    if mode == "checkpointing":
        # transformers' gradient_checkpointing_enable(), under its current name where it has one.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    model.train()
    # The optimizer class and its arguments as the Trainer gets them from `optim` (CATSegTrainer.create_optimizer).
    training_args = TrainingArguments(
        output_dir=os.path.join(tempfile.gettempdir(), "catseg-benchmark-unused"), optim=args.optim, learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY, report_to=[],
    )
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    optimizer = build_optimizer(model, optimizer_cls, optimizer_kwargs, weight_decay=WEIGHT_DECAY)
    crop = model.config.clip_resolution if args.quick else TRAIN_CROP
    examples = []
    for _ in range(TRAIN_BATCH):
        label = rng.integers(0, len(names), size=(crop, crop)).astype(np.int64)
        label[rng.random((crop, crop)) < 0.05] = IGNORE_INDEX
        image = rng.integers(0, 256, size=(crop, crop, 3), dtype=np.uint8)
        examples.append({"image": image, "label": label})
    collator = CATSegTrainingCollator(
        {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"]},
        processor.image_processor,
        ignore_index=IGNORE_INDEX,
    )
    batch = collator(examples)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    def step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_case(args: argparse.Namespace) -> dict:
    """Runs one case in this process and returns its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    from catseg_hf import CATSegForSemanticSegmentation, CATSegProcessor
    from catseg_hf.cpu_allocator import TUNED_ALLOCATOR_SETTINGS

    model = CATSegForSemanticSegmentation.from_pretrained(args.model).eval()
    processor = CATSegProcessor.from_pretrained(args.model)
    kind, count, _ = CASES[args.case]
    names = class_names(count, args.quick)
    step = build_step(args, model, processor, names)

    step()  # warm-up
    recorder = None
    flops = None
    if args.flops and kind != "train":
        from torch.utils.flop_counter import FlopCounterMode

        recorder = PartRecorder(model)
        counter = FlopCounterMode(display=False, custom_mapping=cpu_kernel_flop_formulas())
        # The timer times exactly the ops the counter counts, and is entered first so as not to time the counter.
        with flop_op_timer(counter.flop_registry) as op_timer, counter:
            recorder.start(counter, op_timer)
            step()
            recorder.stop()
        counted = dict(recorder.flops)
        flop_op_seconds = dict(recorder.flop_op_seconds)
        counted_by_kind = recorder.by_kind  # start() below gives the recorder new dicts: these stay the counted run's
        matmul_n = 512 if args.quick else 2048
        # Probed before and after the timed runs: this machine's rate drifts, and one probe can catch a slow moment.
        matmul_probes = [matmul_gflops(matmul_n)]
    part_seconds: list[dict] = []
    times = []
    before = rusage_snapshot()
    for _ in range(args.runs):
        if recorder is not None:
            recorder.start()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        if recorder is not None:
            recorder.stop()
            part_seconds.append(dict(recorder.seconds))
    after = rusage_snapshot()
    if recorder is not None:
        recorder.remove()
        matmul_probes.append(matmul_gflops(matmul_n))
        parts = {}
        for part in PARTS:
            if part not in counted and not any(part in run for run in part_seconds):
                continue
            seconds = statistics.median(run.get(part, 0.0) for run in part_seconds)
            gflop = counted.get(part, 0) / 1e9
            parts[part] = {
                "gflop": gflop,
                "seconds": seconds,
                "gflops_per_s": gflop / seconds if seconds > 0 else None,
                "flop_op_seconds": flop_op_seconds.get(part, 0.0),
                "by_kind": {
                    kind: {"gflop": kind_flops / 1e9, "flop_op_seconds": kind_seconds}
                    for kind, (kind_flops, kind_seconds) in counted_by_kind.get(part, {}).items()
                    if kind_flops or kind_seconds
                },
            }
        total_gflop = sum(counted.values()) / 1e9
        flops = {
            "parts": parts,
            "total_gflop": total_gflop,
            "total_gflops_per_s": total_gflop / statistics.median(times),
            "total_flop_op_seconds": sum(flop_op_seconds.values()),
            "matmul_n": matmul_n,
            "matmul_gflops_per_s": max(matmul_probes),
            "matmul_probes_gflops_per_s": matmul_probes,
        }
    runs = max(args.runs, 1)
    result = {
        "case": args.case,
        "kind": kind,
        "num_classes": len(names),
        "dtype": args.dtype,
        "optim": args.optim,
        "threads": args.threads,
        "runs": args.runs,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "cpu_user_s": (after["user"] - before["user"]) / runs,
        "cpu_sys_s": (after["sys"] - before["sys"]) / runs,
        "minor_faults": (after["minflt"] - before["minflt"]) / runs,
        "major_faults": (after["majflt"] - before["majflt"]) / runs,
        "peak_rss_gb": peak_rss_bytes() / 2**30,
        "torch": torch.__version__,
        "cpu_allocator": {name: os.environ.get(name) for name in TUNED_ALLOCATOR_SETTINGS},
    }
    if kind == "train":
        result.update(batch_size=TRAIN_BATCH, crop_size=model.config.clip_resolution if args.quick else TRAIN_CROP)
        checkpointing = getattr(type(model), "is_activation_checkpointing", None)
        result["gradient_checkpointing"] = bool(
            model.is_activation_checkpointing if checkpointing is not None else model.is_gradient_checkpointing
        )
    if flops is not None:
        result["flops"] = flops
    return result


# ------------------------------------------------------------------------------------------------ background load
def process_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a live process, from /proc (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BackgroundLoad:
    """N busy-loop processes, stopped on exit from the `with` block whatever happens."""

    def __init__(self, count: int, deadline_s: float):
        self.count, self.deadline_s = count, deadline_s
        self.processes: list[subprocess.Popen] = []
        self.report: dict = {}

    def __enter__(self):
        deadline = time.time() + self.deadline_s
        try:
            for _ in range(self.count):
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-c", BUSY_LOOP, repr(deadline), str(os.getpid())],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        alive = [p.poll() is None for p in self.processes]
        cpu = [process_cpu_seconds(p.pid) for p in self.processes]
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.report = {
            "processes": self.count,
            "pids": [p.pid for p in self.processes],
            "deadline_s": self.deadline_s,
            "alive_at_end": alive,
            "cpu_s": cpu,
        }

    def __exit__(self, *exc):
        self.stop()
        return False


# ------------------------------------------------------------------------------------------------ driver
def run_in_subprocess(args: argparse.Namespace, case: str) -> tuple[dict | None, float, str]:
    command = [
        sys.executable, __file__, "--model", args.model, "--case", case, "--runs", str(args.runs),
        "--threads", str(args.threads), "--dtype", args.dtype, "--optim", args.optim,
    ]
    if args.flops:
        command.append("--flops")
    if args.quick:
        command.append("--quick")
    environment = None
    if args.cpu_allocator == "tuned":
        from catseg_hf.cpu_allocator import tuned_allocator_environment

        environment = tuned_allocator_environment()
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        return None, elapsed, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1]), elapsed, ""


HEADER = (
    f"{'case':24s} {'condition':9s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'user s':>8s} {'sys s':>7s} "
    f"{'minor flt':>10s} {'major flt':>9s} {'peak RSS GB':>11s} {'x quiet':>7s}"
)


def format_row(result: dict) -> str:
    slowdown = result.get("slowdown_vs_quiet")
    return (
        f"{result['case']:24s} {result['condition']:9s} {result['median_s']:9.3f} {result['min_s']:8.3f} "
        f"{result['max_s']:8.3f} {result['cpu_user_s']:8.3f} {result['cpu_sys_s']:7.3f} "
        f"{result['minor_faults']:10.0f} {result['major_faults']:9.0f} {result['peak_rss_gb']:11.2f} "
        f"{(f'{slowdown:.2f}x' if slowdown else ''):>7s}"
    )


def format_flops(result: dict) -> str:
    flops = result["flops"]
    rate = flops["matmul_gflops_per_s"]
    lines = [
        f"  FLOPs of {result['case']} ({result['condition']}); "
        f"float32 matmul {flops['matmul_n']}^2: {rate:.1f} GFLOP/s (the faster of "
        + " / ".join(f"{probe:.1f}" for probe in flops["matmul_probes_gflops_per_s"])
        + " before / after the timed runs); floor: GFLOP at that rate; FLOP ops: the counted run's products,"
        " convolutions and attention alone",
        f"  {'part':22s} {'GFLOP':>10s} {'s':>8s} {'GFLOP/s':>9s} {'% matmul':>9s} {'x floor':>8s} "
        f"{'FLOP ops s':>10s} {'x floor':>8s}",
    ]
    total = {
        "gflop": flops["total_gflop"],
        "seconds": result["median_s"],
        "gflops_per_s": flops["total_gflops_per_s"],
        "flop_op_seconds": flops["total_flop_op_seconds"],
    }
    for part, values in list(flops["parts"].items()) + [("total", total)]:
        achieved = values["gflops_per_s"]
        floor = values["gflop"] / rate if rate else 0.0
        cells = [
            f"{achieved:9.2f}" if achieved else f"{'-':>9s}",
            f"{100 * achieved / rate:8.1f}%" if achieved and rate else f"{'-':>9s}",
            f"{values['seconds'] / floor:7.2f}x" if floor > 0 else f"{'-':>8s}",
            f"{values['flop_op_seconds']:10.3f}",
            f"{values['flop_op_seconds'] / floor:7.2f}x" if floor > 0 else f"{'-':>8s}",
        ]
        lines.append(f"  {part:22s} {values['gflop']:10.3f} {values['seconds']:8.3f} " + " ".join(cells))
    lines += [
        "",
        "  FLOP ops by kind (the counted run): over floor = their seconds minus their GFLOP at the matmul rate",
        f"  {'part':22s} {'kind':13s} {'GFLOP':>10s} {'s':>8s} {'GFLOP/s':>9s} {'% matmul':>9s} {'over floor s':>12s}",
    ]
    totals: dict[str, list[float]] = {}
    rows = [(part, kind, values) for part in flops["parts"] for kind, values in flops["parts"][part]["by_kind"].items()]
    for _, kind, values in rows:
        total = totals.setdefault(kind, [0.0, 0.0])
        total[0] += values["gflop"]
        total[1] += values["flop_op_seconds"]
    rows += [("total", kind, {"gflop": gflop, "flop_op_seconds": seconds}) for kind, (gflop, seconds) in totals.items()]
    for part, kind, values in rows:
        gflop, seconds = values["gflop"], values["flop_op_seconds"]
        achieved = gflop / seconds if seconds > 0 else None
        cells = [
            f"{achieved:9.2f}" if achieved else f"{'-':>9s}",
            f"{100 * achieved / rate:8.1f}%" if achieved and rate else f"{'-':>9s}",
            f"{seconds - gflop / rate:12.3f}" if rate else f"{'-':>12s}",
        ]
        lines.append(f"  {part:22s} {kind:13s} {gflop:10.3f} {seconds:8.3f} " + " ".join(cells))
    return "\n".join(lines)


def die_with_parent() -> None:
    """Linux: have the kernel kill this case process when the driver that started it dies (even by SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the driver died before the call
        sys.exit(1)


def _raise_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder with processor (make_random_checkpoint.py); optional: --quick")
    parser.add_argument(
        "--cases",
        default=",".join(DEFAULT_CASES),
        help=f"comma-separated, from {', '.join(CASES)} (default: %(default)s)",
    )
    parser.add_argument("--runs", type=int, help="timed runs per case (default 5, 1 with --quick)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--optim", choices=["adamw_torch_fused", "adamw_torch"], default="adamw_torch_fused",
        help="the training cases' optimizer, as TrainingArguments.optim (default: %(default)s, the recipes' choice; "
        "adamw_torch: the per-parameter loop, the recipes' choice before)",
    )
    parser.add_argument(
        "--cpu-allocator", choices=["tuned", "default"], default="tuned",
        help="tuned (default): each case process starts under catseg_hf.cpu_allocator's settings, as scripts/train.py "
        "does (freed memory reused, huge pages); default: the environment as it is",
    )
    parser.add_argument("--flops", action="store_true", help="FLOPs and GFLOP/s per part (inference cases)")
    parser.add_argument("--background-load", type=int, default=0, metavar="N", help="also time with N busy loops")
    parser.add_argument("--background-deadline", type=float, metavar="S", help="busy loops end by themselves after S s")
    parser.add_argument("--quick", action="store_true", help="tiny model and inputs (smoke test)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.background_load < 0:
        parser.error("--background-load must be >= 0")

    if args.case:
        die_with_parent()
        print(json.dumps(run_case(args)))
        return 0

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if not cases:
        parser.error("--cases names no case")
    if args.model is None and not args.quick:
        parser.error("--model is required (unless --quick, which builds a tiny random model)")

    previous_handler = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    temporary = None
    args.built_tiny_model = False
    try:
        if args.model is None:
            from catseg_hf.testing_utils import save_tiny_model_folder, shared_dir

            bpe = shared_dir() / "fixtures" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
            if not bpe.is_file():
                print(f"--quick without --model needs the CLIP BPE file at {bpe}", file=sys.stderr)
                return 1
            temporary = tempfile.mkdtemp(prefix="catseg-benchmark-")
            args.model = str(save_tiny_model_folder(Path(temporary) / "tiny", bpe))
            args.built_tiny_model = True
        return benchmark(args, cases)
    except KeyboardInterrupt:
        print("interrupted: the case process and the busy loops were stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def benchmark(args: argparse.Namespace, cases: list[str]) -> int:
    results = []
    print(HEADER, flush=True)
    for case in cases:
        quiet, elapsed, error = run_in_subprocess(args, case)
        if quiet is None:
            print(f"{case}: failed\n{error}", file=sys.stderr)
            return 1
        quiet["condition"] = "quiet"
        results.append(quiet)
        print(format_row(quiet), flush=True)
        if args.background_load > 0:
            deadline = args.background_deadline
            if deadline is None:
                deadline = 2 * elapsed + 5 if args.quick else 3 * elapsed + 60
            with BackgroundLoad(args.background_load, deadline) as load:
                loaded, _, error = run_in_subprocess(args, case)
            if loaded is None:
                print(f"{case} (loaded): failed\n{error}", file=sys.stderr)
                return 1
            loaded["condition"] = "loaded"
            loaded["background_load"] = load.report
            loaded["slowdown_vs_quiet"] = loaded["median_s"] / quiet["median_s"] if quiet["median_s"] > 0 else None
            results.append(loaded)
            print(format_row(loaded), flush=True)
    if args.flops:
        for result in results:
            if "flops" in result:
                print("\n" + format_flops(result))
    if args.json:
        payload = {
            "model": "tiny random model (--quick)" if args.built_tiny_model else args.model,
            "quick": args.quick,
            "background_load": args.background_load,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
