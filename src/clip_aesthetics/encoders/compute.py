"""Where and how a model computes: the precision rule (``auto``: bf16 on CUDA and on CPUs that compute bf16
natively), its autocast context, and how many torch threads a CPU model gets beside decoding workers.

Every layer that runs a model (prompt encoding, heads, the image pipeline, fine-tuning) takes these from here,
so one rule holds everywhere."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from ..constants import BATCH_SIZE_CPU, BATCH_SIZE_CUDA


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where a bf16 tower runs ~2x fp32.

    ``CLIP_AESTHETICS_CPU_BF16=0`` answers no (keeps ``auto`` at fp32, e.g. to match open_clip exactly),
    ``=1`` answers yes.
    """
    forced = os.environ.get("CLIP_AESTHETICS_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _cpuinfo_bf16()


@functools.cache
def _cpuinfo_bf16() -> bool:
    try:
        return bf16_in_cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:  # not Linux: keep fp32 (exact) rather than guess
        return False


def bf16_in_cpu_flags(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo`` text lists AVX512-BF16 or AMX-BF16."""
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(device: torch.device, precision: str, *, cpu_bf16: bool = True) -> str:
    """``auto`` means bf16 on CUDA and on CPUs that compute bf16 natively (:func:`cpu_has_native_bf16`),
    else fp32: one rule for every command, so that features embedded for a probe and the same probe
    evaluated on images give the same metrics (``CLIP_AESTHETICS_CPU_BF16=0`` keeps CPUs at fp32, to match
    open_clip exactly). ``cpu_bf16=False`` keeps one caller's ``auto`` at fp32 on every CPU.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r} (choose auto, fp32, bf16 or fp16)")
    if precision == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16()):
            return "bf16"
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for ``precision`` on ``device`` (a no-op for fp32)."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or ``taskset``'s share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_threads(workers: int, device: torch.device | None = None) -> int:
    """Torch threads for a CPU model while ``workers`` decoding processes share its cores.

    The rule: the cores that neither the workers nor other programs are using, at least one, never more
    than torch already uses (a setting of the user's, ``OMP_NUM_THREADS`` or a Ray actor's CPUs). Torch's
    threads wait for each other at every operation, so one thread waiting for a core stalls them all:
    on a shared 2-core machine one thread scored 1.3-1.6x faster than two, and encoded prompts 2x faster
    (docs/benchmarks.md). Other programs are seen by sampling idle time (:func:`idle_cores`), only when
    more than one thread is possible. A GPU model or no model named (``device=None``) keeps the setting.
    """
    current = torch.get_num_threads()
    if device is None or device.type != "cpu":
        return current
    threads = max(1, min(current, usable_cores() - workers))
    if threads > 1:
        threads = max(1, min(threads, round(idle_cores()) - workers))
    return threads


def idle_cores(interval: float = 0.1) -> float:
    """How many of this process's cores sat idle over the next ``interval`` seconds (``/proc/stat``, Linux;
    elsewhere all of them are taken as free)."""
    cpus = {f"cpu{n}" for n in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else set()
    try:
        idle_before, total_before = _cpu_ticks(cpus)
        time.sleep(interval)
        idle_after, total_after = _cpu_ticks(cpus)
    except (OSError, ValueError):
        return float(usable_cores())
    elapsed = total_after - total_before
    return len(cpus) * (idle_after - idle_before) / elapsed if elapsed > 0 else float(len(cpus))


def _cpu_ticks(cpus: set[str]) -> tuple[int, int]:
    """Idle (idle + iowait) and total ticks of ``cpus`` so far; total without guest time (inside user)."""
    idle = total = 0
    with open("/proc/stat", encoding="ascii") as handle:
        for line in handle:
            name, *fields = line.split()
            if name in cpus:
                ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
                idle, total = idle + ticks[3] + ticks[4], total + sum(ticks)
    if not total:
        raise ValueError("no CPU lines in /proc/stat")
    return idle, total


@contextmanager
def threads_beside_workers(workers: int, device: torch.device | None = None) -> Iterator[int]:
    """Set :func:`model_threads` for the duration (torch's setting is process-wide), then restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(model_threads(workers, device))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def default_batch_size(device: torch.device) -> int:
    """Images per model call when none is given: the same default on a device in every command.

    A CPU gains nothing from more than a few dozen images per call (the cores are busy from the first
    matrix product) and every image more is memory; a GPU needs hundreds to keep busy, and a batch that
    does not fit its memory is split automatically, so the larger default costs nothing there.
    """
    return BATCH_SIZE_CUDA if device.type == "cuda" else BATCH_SIZE_CPU
