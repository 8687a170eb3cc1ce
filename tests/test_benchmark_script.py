"""Smoke tests of scripts/benchmark.py in --quick mode (tiny random model, tiny inputs).

The driver runs every case in a child process, and each child imports torch and transformers, which takes seconds on
a busy machine: the end-to-end run is kept to one case (quiet + loaded, with --flops), and the training cases are run
in this process through the script's own `run_case`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catseg_hf.cpu_allocator import TUNED_ALLOCATOR_SETTINGS, tuned_allocator_environment
from catseg_hf.testing_utils import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "benchmark.py"
MEASUREMENT_FIELDS = (
    "median_s", "min_s", "max_s", "cpu_user_s", "cpu_sys_s", "minor_faults", "major_faults", "peak_rss_gb",
)


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT, "catseg_benchmark_script")


def run_script(args: list[str], shared_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CATSEG_SHARED_DIR=str(shared_path), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300
    )


def process_exists(pid: int) -> bool:
    # A reaped child has no /proc entry; a zombie would still have one, with state Z.
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_quick_end_to_end_with_flops_and_background_load(tmp_path, shared_path):
    output = tmp_path / "results.json"
    completed = run_script(
        ["--quick", "--cases", "whole150", "--threads", "1", "--flops", "--background-load", "1"]
        + ["--json", str(output)],
        shared_path,
    )
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr[-4000:]}"
    payload = json.loads(output.read_text())
    assert payload["quick"] and payload["background_load"] == 1
    quiet, loaded = payload["results"]
    assert (quiet["case"], quiet["condition"]) == ("whole150", "quiet")
    assert (loaded["case"], loaded["condition"]) == ("whole150", "loaded")
    for row in (quiet, loaded):
        for field in MEASUREMENT_FIELDS:
            assert isinstance(row[field], (int, float)) and row[field] >= 0, field
        assert row["cpu_user_s"] + row["cpu_sys_s"] > 0
        flops = row["flops"]
        assert {"clip_vision", "aggregator", "decoder"} <= set(flops["parts"])
        assert flops["parts"]["aggregator"]["gflop"] > 0 and flops["parts"]["decoder"]["gflop"] > 0
        assert flops["total_gflop"] == pytest.approx(sum(p["gflop"] for p in flops["parts"].values()))
        assert flops["matmul_gflops_per_s"] == max(flops["matmul_probes_gflops_per_s"]) > 0
        assert len(flops["matmul_probes_gflops_per_s"]) == 2  # before and after the timed runs
        # The products', convolutions' and attention's own time per part: where FLOPs are, and nowhere else.
        for part in flops["parts"].values():
            assert (part["flop_op_seconds"] > 0) == (part["gflop"] > 0), part
        op_seconds = [part["flop_op_seconds"] for part in flops["parts"].values()]
        assert flops["total_flop_op_seconds"] == pytest.approx(sum(op_seconds))
        # The same FLOPs and op time split by kind of op: they add up to the part's, and each kind is where it runs.
        for part in flops["parts"].values():
            kinds = part["by_kind"]
            assert set(kinds) <= {"products", "convolutions", "attention"}
            assert sum(kind["gflop"] for kind in kinds.values()) == pytest.approx(part["gflop"])
            assert sum(kind["flop_op_seconds"] for kind in kinds.values()) == pytest.approx(part["flop_op_seconds"])
        assert {"products", "attention"} <= set(flops["parts"]["aggregator"]["by_kind"])  # the Swin windows' attention
        assert set(flops["parts"]["decoder"]["by_kind"]) == {"convolutions"}
    load = loaded["background_load"]
    assert load["processes"] == 1 and len(load["pids"]) == 1
    assert load["alive_at_end"] == [True]  # the busy loop ran for the whole loaded case
    assert load["cpu_s"][0] > 0
    assert loaded["slowdown_vs_quiet"] > 0
    assert not any(process_exists(pid) for pid in load["pids"])
    # Each case process started under the tuned CPU allocator (the default of --cpu-allocator) and recorded it.
    expected = tuned_allocator_environment(os.environ)
    assert quiet["cpu_allocator"] == {name: expected.get(name) for name in TUNED_ALLOCATOR_SETTINGS}
    # The table shows both conditions, the per-part FLOPs and the FLOP ops by kind.
    assert "loaded" in completed.stdout and "GFLOP/s" in completed.stdout and "minor flt" in completed.stdout
    assert "FLOP ops by kind" in completed.stdout and "over floor s" in completed.stdout


@pytest.mark.parametrize("case", ["train171", "train171-checkpointing"])
def test_training_cases(script, case, tmp_path, bpe_path):
    from catseg_hf.testing_utils import save_tiny_model_folder

    folder = save_tiny_model_folder(tmp_path / "tiny", bpe_path)
    args = argparse.Namespace(
        model=str(folder), case=case, runs=1, threads=1, dtype="float32", flops=True, quick=True,
        optim="adamw_torch_fused",
    )
    import torch

    threads = torch.get_num_threads()
    try:
        result = script.run_case(args)
    finally:
        torch.set_num_threads(threads)
    assert result["kind"] == "train" and result["batch_size"] == 2 and result["num_classes"] == 12
    assert result["crop_size"] == 64  # the tiny model's CLIP resolution
    assert result["gradient_checkpointing"] is (case == "train171-checkpointing")
    assert "flops" not in result  # FLOPs are counted for the inference path only
    for field in MEASUREMENT_FIELDS:
        assert result[field] >= 0


@pytest.mark.parametrize("allocator", ["tuned", "default"])
def test_case_process_environment_follows_cpu_allocator(script, monkeypatch, allocator):
    started = {}

    def fake_run(command, **kwargs):
        started.update(kwargs)
        return subprocess.CompletedProcess(command, 0, stdout='{"case": "whole150"}\n', stderr="")

    monkeypatch.setattr(script.subprocess, "run", fake_run)
    args = argparse.Namespace(
        model="m", runs=1, threads=1, dtype="float32", optim="adamw_torch_fused", flops=False, quick=True,
        cpu_allocator=allocator,
    )
    result, _, error = script.run_in_subprocess(args, "whole150")
    assert result == {"case": "whole150"} and not error
    if allocator == "default":
        assert started["env"] is None  # this process's environment, as it is
    else:
        assert started["env"] == tuned_allocator_environment()


def test_background_load_is_stopped_on_error(script):
    with pytest.raises(RuntimeError):
        with script.BackgroundLoad(2, deadline_s=60) as load:
            pids = [p.pid for p in load.processes]
            time.sleep(0.3)
            raise RuntimeError("case failed")
    assert len(pids) == 2 and load.report["pids"] == pids
    assert all(cpu is not None and cpu > 0 for cpu in load.report["cpu_s"])  # they were spinning
    assert not any(process_exists(pid) for pid in pids)


def test_busy_loop_stops_at_its_deadline(script):
    with script.BackgroundLoad(1, deadline_s=0.2) as load:
        load.processes[0].wait(timeout=30)
    assert load.report["alive_at_end"] == [False]


def test_unknown_case_is_a_clear_error(shared_path):
    completed = run_script(["--quick", "--cases", "whole150,nonsense"], shared_path)
    assert completed.returncode == 2
    assert "unknown case(s) nonsense" in completed.stderr and "train171-checkpointing" in completed.stderr
    missing_model = run_script(["--cases", "whole150"], shared_path)
    assert missing_model.returncode == 2 and "--model is required" in missing_model.stderr


def test_fused_mlp_products_are_counted_like_the_plain_layers(script):
    """The kernels' oneDNN products (bias, activation or residual fused) count as the products as written."""
    import torch
    from timm.layers import Mlp
    from torch.utils.flop_counter import FlopCounterMode

    from catseg_hf import catseg_kernels

    if not catseg_kernels.HAS_ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN linear")
    mlp, norm, hidden = Mlp(16, 64, act_layer=torch.nn.GELU), torch.nn.LayerNorm(16), torch.randn(2, 9, 16)
    with torch.no_grad():
        with FlopCounterMode(display=False, custom_mapping=script.cpu_kernel_flop_formulas()) as fused:
            catseg_kernels.residual_mlp(hidden, norm, mlp)
        with FlopCounterMode(display=False) as plain:
            hidden + mlp(norm(hidden))
    assert fused.get_total_flops() == plain.get_total_flops() == 2 * 2 * (2 * 9) * 16 * 64
    linear, tokens, residual = torch.nn.Linear(16, 8), hidden.view(-1, 16), torch.randn(18, 8)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=script.cpu_kernel_flop_formulas()) as added:
        catseg_kernels.linear_plus(linear, tokens, residual)  # the product with the residual added in its output
    assert added.get_total_flops() == 2 * 18 * 16 * 8


def test_cpu_attention_is_counted_and_timed(script, monkeypatch):
    """`scaled_dot_product_attention` on CPU runs `_scaled_dot_product_flash_attention_for_cpu`, which torch's counter
    does not know: it counts as the two batched products (Q K^T and the weights times V), and the op timer times it."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    batch, heads, queries, keys, head_dim = 3, 2, 5, 7, 8
    query, key = torch.randn(batch, heads, queries, head_dim), torch.randn(batch, heads, keys, head_dim)
    value = torch.randn(batch, heads, keys, head_dim)
    expected = 2 * batch * heads * queries * keys * 2 * head_dim
    clock = iter(range(100))
    monkeypatch.setattr(script.time, "perf_counter", lambda: float(next(clock)))
    counter = FlopCounterMode(display=False, custom_mapping=script.cpu_kernel_flop_formulas())
    with torch.no_grad(), script.flop_op_timer(counter.flop_registry) as timer, counter:
        F.scaled_dot_product_attention(query, key, value)
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in counter.flop_counts["Global"]
    assert counter.get_total_flops() == expected
    assert timer.seconds == 1.0  # the attention op, timed once
    with torch.no_grad(), FlopCounterMode(display=False) as plain:  # the same attention as written
        torch.softmax(query @ key.transpose(-1, -2), dim=-1) @ value
    assert plain.get_total_flops() == expected


def test_flop_op_kinds(script):
    import torch

    aten = torch.ops.aten
    assert script.flop_op_kind(aten._scaled_dot_product_flash_attention_for_cpu) == "attention"
    assert script.flop_op_kind(aten.convolution) == script.flop_op_kind(aten._convolution) == "convolutions"
    for op in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm, torch.ops.mkldnn._linear_pointwise):
        assert script.flop_op_kind(op) == "products", op


def test_flop_op_timer_splits_time_by_kind(script, monkeypatch):
    """Each timed op's time goes to its kind; `.seconds` is their sum."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    clock = iter(range(100))
    monkeypatch.setattr(script.time, "perf_counter", lambda: float(next(clock)))
    counter = FlopCounterMode(display=False, custom_mapping=script.cpu_kernel_flop_formulas())
    image, tokens = torch.randn(1, 2, 6, 6), torch.randn(1, 1, 4, 8)
    with torch.no_grad(), script.flop_op_timer(counter.flop_registry) as timer, counter:
        F.conv2d(image, torch.randn(3, 2, 3, 3))
        F.scaled_dot_product_attention(tokens, tokens, tokens)
        torch.mm(tokens[0, 0], tokens[0, 0].T)
        torch.mm(tokens[0, 0], tokens[0, 0].T)
    assert timer.seconds_by_kind == {"convolutions": 1.0, "attention": 1.0, "products": 2.0}
    assert timer.seconds == 4.0


def test_part_recorder_splits_flops_and_op_time_by_kind(script):
    """The recorder attributes each kind's FLOPs and op time to the part that ran it (here the aggregator and the
    decoder of a tiny model), and the part totals are the sums over kinds."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from catseg_hf import CATSegForSemanticSegmentation
    from catseg_hf.testing_utils import tiny_catseg_config

    model = CATSegForSemanticSegmentation(tiny_catseg_config()).eval()
    resolution, projection_dim = model.config.clip_resolution, model.config.clip_config.projection_dim
    pixel_values = torch.randn(1, 3, resolution, resolution)
    class_embeddings = torch.randn(5, 1, projection_dim)  # 5 classes, one prompt
    recorder = script.PartRecorder(model)
    counter = FlopCounterMode(display=False, custom_mapping=script.cpu_kernel_flop_formulas())
    with torch.no_grad(), script.flop_op_timer(counter.flop_registry) as timer, counter:
        recorder.start(counter, timer)
        model(pixel_values=pixel_values, class_embeddings=class_embeddings)
        recorder.stop()
    recorder.remove()
    assert recorder.by_kind["aggregator"]["attention"][0] > 0  # the Swin windows
    assert recorder.by_kind["decoder"]["convolutions"][0] > 0
    assert recorder.by_kind["decoder"]["attention"] == [0, 0.0]
    assert sum(recorder.flops.values()) == counter.get_total_flops()
    assert sum(recorder.flop_op_seconds.values()) == pytest.approx(timer.seconds)
    for part, kinds in recorder.by_kind.items():
        assert recorder.flops[part] == sum(flops for flops, _ in kinds.values())


def test_flop_op_timer_times_only_the_counted_ops(script, monkeypatch):
    """The timer adds the wall time of the FLOP-counted ops (here the mm) and of nothing else."""
    import torch
    from torch.utils.flop_counter import flop_registry

    clock = iter(range(100))
    monkeypatch.setattr(script.time, "perf_counter", lambda: float(next(clock)))
    a = torch.randn(8, 8)
    with script.flop_op_timer(set(flop_registry)) as timer:
        torch.mm(a, a).relu_().sum()
        torch.mm(a, a)
    assert timer.seconds == 2.0  # one clock tick inside each mm; relu_ and sum are not timed
