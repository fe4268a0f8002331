"""Timing and memory measurement for the benchmarks: interleaved repetitions, ratios taken pair by pair, peak
memory of one call (CUDA allocator, or the process's resident set on Linux)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, *, reps: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call, `reps` times, round-robin over the functions after `warmup` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times: dict[str, list[float]], reference: str | None, *, batch_size: int = 1) -> dict:
    """Median seconds, their range, images per second at the median, and the ratio to `reference` taken
    repetition by repetition (the pairs ran next to each other), as median and range."""
    summary = {}
    for name, values in times.items():
        median = statistics.median(values)
        entry = {"median_s": median, "min_s": min(values), "max_s": max(values), "times_s": values,
                 "images_per_s": batch_size / median}
        if reference is not None and reference in times:
            ratios = [value / ref for value, ref in zip(values, times[reference])]
            entry[f"ratio_to_{reference}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                              "max": max(ratios)}
        summary[name] = entry
    return summary


def proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_cpu_peak() -> bool:
    """Returns freed heap to the system and resets the process's peak resident set (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def step_peak_bytes(step, device: torch.device) -> int | None:
    """Memory the step needs above what is held before it (activations, gradients, temporaries) at its peak."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if not reset_cpu_peak():
        return None
    before = proc_status_kib("VmRSS")
    step()
    peak = proc_status_kib("VmHWM")
    return None if before is None or peak is None else (peak - before) * 1024


def layer_ranges(model, module_type: type, name: str) -> list:
    """Forward hooks that put every call of a `module_type` submodule inside a profiler range `name`; returns the
    hook handles (remove them when done)."""
    handles, stack = [], []

    def enter(module, _args):
        stack.append(torch.profiler.record_function(name).__enter__())

    def leave(module, _args, _output):
        stack.pop().__exit__(None, None, None)

    for module in model.modules():
        if isinstance(module, module_type):
            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def profile_ranges(fn, device: torch.device, name: str) -> dict:
    """One profiled call of `fn` (after a warm one), summarised for the ranges called `name`: their calls, their share
    of the CPU-side (and GPU) time, operators and CUDA kernels per call, and the costliest operators inside."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()  # warm
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    events = prof.events()
    layers = [e for e in events if e.name == name]
    total_us = sum(e.cpu_time_total for e in events if e.cpu_parent is None)
    inside: dict[str, dict] = {}
    direct_ops = 0
    kernels, inside_device_us = 0, 0.0
    all_device_us = sum(k.duration for e in events for k in getattr(e, "kernels", []))
    for event in events:
        parent, depth = event.cpu_parent, 0
        while parent is not None and parent.name != name:
            parent, depth = parent.cpu_parent, depth + 1
        if parent is None or event.name == name:
            continue
        direct_ops += depth == 0
        entry = inside.setdefault(event.name, {"calls": 0, "self_cpu_us": 0.0, "device_us": 0.0})
        entry["calls"] += 1
        entry["self_cpu_us"] += event.self_cpu_time_total
        for kernel in getattr(event, "kernels", []):
            kernels += 1
            entry["device_us"] += kernel.duration
            inside_device_us += kernel.duration
    sort_key = "device_us" if device.type == "cuda" else "self_cpu_us"
    top = sorted(inside.items(), key=lambda item: -item[1][sort_key])[:12]
    return {
        "layer_calls": len(layers),
        "layer_cpu_share": sum(e.cpu_time_total for e in layers) / total_us if total_us else None,
        "ops_per_layer_call": direct_ops / len(layers) if layers else None,
        "kernels_per_layer_call": kernels / len(layers) if layers and device.type == "cuda" else None,
        "layer_device_share": inside_device_us / all_device_us if all_device_us else None,
        "top_ops": [{"name": name, **values} for name, values in top],
    }
