"""Measurement: wall time of synchronised calls, peak memory, parameter counts, the CPU's bf16 support."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    """Frees what the previous run left, so the next one's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back to the OS, so RSS drops


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.processor() or platform.machine() or "cpu"


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


class PeakMemory:
    """Context manager: `.peak_bytes` is the peak memory of the block above its start.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: resident set size sampled every 5 ms from
    /proc/self/statm; where there is no /proc, the growth of `getrusage`'s high-water mark.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes = device, 0
        self._stop = threading.Event()

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated above the allocation before the model was built"
        if _rss_bytes() is not None:
            return "peak RSS above the RSS before the model was built, sampled every 5 ms (/proc/self/statm)"
        return "growth of the process's peak RSS (getrusage ru_maxrss): 0 when below an earlier run's peak"

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __enter__(self) -> "PeakMemory":
        release_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif _rss_bytes() is not None:
            self._base = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._peak, _rss_bytes() or 0) - self._base
        else:
            unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            self.peak_bytes = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._base) * unit


def timed(fn: Callable[[int], Any], warmup: int, calls: int, device: torch.device) -> list[float]:
    """Runs `fn(i)` `warmup` times untimed, then `calls` times; returns the seconds of each timed call."""
    for i in range(warmup):
        fn(i)
    seconds = []
    for i in range(calls):
        synchronize(device)
        start = time.perf_counter()
        fn(warmup + i)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def count_parameters(module: nn.Module, trainable: bool) -> int:
    """Parameters (tied ones once) that do (`trainable=True`) or do not require grad."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad == trainable)



def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
