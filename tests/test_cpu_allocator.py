"""catseg_hf.cpu_allocator: the environment it makes, the restart it does, and that the settings take effect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from catseg_hf import cpu_allocator
from catseg_hf.cpu_allocator import (
    OPT_OUT_VARIABLE,
    TUNED_ALLOCATOR_SETTINGS,
    allocator_settings_apply,
    tuned_allocator_environment,
)

needs_glibc = pytest.mark.skipif(not allocator_settings_apply(), reason="the settings are Linux/glibc ones")

# Restarts itself, then reports its pid, its environment and the page faults of a second 256 MiB tensor (the first
# one freed): with freed memory kept in the process, the second one reuses it and faults almost no page in.
PROBE = textwrap.dedent(
    """
    import json, os, resource, sys
    print(json.dumps({"before_restart": os.getpid()}), flush=True)
    from catseg_hf.cpu_allocator import reexec_with_tuned_allocator
    reexec_with_tuned_allocator()
    import torch
    first = torch.ones(64 * 2**20)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.ones(64 * 2**20)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"pid": os.getpid(), "environ": dict(os.environ), "faults": faults}))
    """
)
TENSOR_PAGES = 256 * 2**20 // 4096


def run_probe(tmp_path, **environ: str) -> tuple[list[dict], str]:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    environment = {k: v for k, v in os.environ.items() if k not in TUNED_ALLOCATOR_SETTINGS and k != OPT_OUT_VARIABLE}
    environment.update(environ)
    completed = subprocess.run(
        [sys.executable, str(probe)], capture_output=True, text=True, env=environment, timeout=180
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [json.loads(line) for line in completed.stdout.splitlines()], completed.stderr


def test_environment_adds_the_settings_and_keeps_the_users_values(monkeypatch):
    monkeypatch.setattr(cpu_allocator, "allocator_settings_apply", lambda: True)
    environment = tuned_allocator_environment({"PATH": "/bin", "MALLOC_ARENA_MAX": "4"})
    assert environment["PATH"] == "/bin"
    assert environment["MALLOC_ARENA_MAX"] == "4"  # the user's own value wins
    for name, value in TUNED_ALLOCATOR_SETTINGS.items():
        if name != "MALLOC_ARENA_MAX":
            assert environment[name] == value
    source = {"PATH": "/bin"}
    tuned_allocator_environment(source)
    assert source == {"PATH": "/bin"}  # a copy, never the mapping given


def test_environment_is_unchanged_when_opted_out_or_off_glibc(monkeypatch):
    monkeypatch.setattr(cpu_allocator, "allocator_settings_apply", lambda: True)
    opted_out = {"PATH": "/bin", OPT_OUT_VARIABLE: "default"}
    assert tuned_allocator_environment(opted_out) == opted_out
    monkeypatch.setattr(cpu_allocator, "allocator_settings_apply", lambda: False)
    assert tuned_allocator_environment({"PATH": "/bin"}) == {"PATH": "/bin"}


@needs_glibc
def test_restart_runs_the_script_again_in_the_same_process_under_the_settings(tmp_path):
    lines, stderr = run_probe(tmp_path, MALLOC_ARENA_MAX="2")
    # The script started twice (its first line printed twice), in the same process, and said why.
    assert [line["before_restart"] for line in lines[:2]] == [lines[2]["pid"]] * 2
    assert "restarting with the tuned CPU allocator" in stderr and OPT_OUT_VARIABLE in stderr
    environ = lines[2]["environ"]
    assert environ["MALLOC_ARENA_MAX"] == "2"
    assert all(environ[name] == value for name, value in TUNED_ALLOCATOR_SETTINGS.items() if name != "MALLOC_ARENA_MAX")
    # The settings work: the second large tensor reuses the first one's memory.
    assert lines[2]["faults"] < TENSOR_PAGES // 100


@needs_glibc
def test_opting_out_keeps_the_process_and_its_allocator(tmp_path):
    lines, stderr = run_probe(tmp_path, **{OPT_OUT_VARIABLE: "default"})
    assert len(lines) == 2 and lines[0]["before_restart"] == lines[1]["pid"]
    assert "restarting" not in stderr
    assert not set(TUNED_ALLOCATOR_SETTINGS) & set(lines[1]["environ"])
    # glibc's default maps a block this large afresh, so every page faults in again (in 4 KiB pages unless the
    # system backs all memory with huge pages).
    if not system_huge_pages_always():
        assert lines[1]["faults"] > TENSOR_PAGES // 2


def system_huge_pages_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            return "[always]" in setting.read()
    except OSError:
        return False
