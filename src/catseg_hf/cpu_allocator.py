"""A CPU memory allocator configuration for processes that train CAT-Seg (or benchmark it) on the CPU.

A training step allocates and frees many 50-200 MB tensors (the cost embedding of every class and its MLP
intermediates, and their gradients). With glibc's and PyTorch's defaults each of them is a fresh `mmap`, which the
kernel faults in and zeroes 4 KiB page by page and which is unmapped again when freed. The settings below keep freed
memory in the process for the next tensor, and back large tensors with transparent huge pages (fewer TLB misses in
the memory-bound element-wise work). What that buys is measured in the README ("Training step") and
docs/performance-notes.md.

Both allocators read these settings once, when the process starts, so they apply to a new process:
`tuned_allocator_environment` makes a child's environment, and `reexec_with_tuned_allocator` restarts the running
script under them (`scripts/train.py` does). Variables the user has set are kept as they are;
`CATSEG_CPU_ALLOCATOR=default` leaves the allocator alone. The cost is memory: freed memory is not given back to the
system until the process ends (the peak resident size stays what it was).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNED_ALLOCATOR_SETTINGS = {
    # PyTorch: allocations of 2 MiB and more are 2 MiB-aligned and advised MADV_HUGEPAGE.
    "THP_MEM_ALLOC_ENABLE": "1",
    # glibc: one arena for all threads, so that what one tile thread frees another can reuse.
    "MALLOC_ARENA_MAX": "1",
    # glibc: large blocks come from the heap instead of a fresh mapping each...
    "MALLOC_MMAP_MAX_": "0",
    # ...and the heap's free top is never handed back to the kernel (1 TiB threshold).
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
}
OPT_OUT_VARIABLE = "CATSEG_CPU_ALLOCATOR"
OPT_OUT_VALUE = "default"
_REEXEC_MARKER = "CATSEG_CPU_ALLOCATOR_REEXEC"


def allocator_settings_apply() -> bool:
    """Whether these settings mean anything here: Linux with glibc (PyTorch's huge-page flag is Linux-only, the
    `MALLOC_*` variables are glibc's)."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def tuned_allocator_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` (default: this process's environment) with `TUNED_ALLOCATOR_SETTINGS` added where the
    variable is not set already; unchanged when `CATSEG_CPU_ALLOCATOR=default` or off Linux/glibc."""
    environment = dict(os.environ if environ is None else environ)
    if environment.get(OPT_OUT_VARIABLE) == OPT_OUT_VALUE or not allocator_settings_apply():
        return environment
    for name, value in TUNED_ALLOCATOR_SETTINGS.items():
        environment.setdefault(name, value)
    return environment


def reexec_with_tuned_allocator() -> None:
    """Restarts the running script (same interpreter, options and arguments, same process id) under
    `tuned_allocator_environment()` when that differs from the current environment; returns otherwise.

    Call it first thing in a script's `if __name__ == "__main__":` block, before any work: the process is replaced.
    It restarts at most once (a marker variable guards against loops) and never from an interactive interpreter."""
    environment = tuned_allocator_environment()
    if environment == dict(os.environ) or os.environ.get(_REEXEC_MARKER):
        return
    original = getattr(sys, "orig_argv", None)
    if not original or not sys.argv or sys.argv[0] in ("", "-c", "-"):
        return
    environment[_REEXEC_MARKER] = "1"
    print(
        "catseg-hf: restarting with the tuned CPU allocator ("
        + " ".join(f"{name}={environment[name]}" for name in TUNED_ALLOCATOR_SETTINGS)
        + f"); {OPT_OUT_VARIABLE}={OPT_OUT_VALUE} keeps the default one.",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *original[1:]], environment)


__all__ = [
    "TUNED_ALLOCATOR_SETTINGS",
    "OPT_OUT_VARIABLE",
    "allocator_settings_apply",
    "tuned_allocator_environment",
    "reexec_with_tuned_allocator",
]
