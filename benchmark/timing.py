"""Timing and peak-memory measurement: calls timed in turns, their latency statistics, and the
memory one call needs at its peak."""
import statistics
import time
from typing import Callable, Dict, List

import torch

# Run a measuring subprocess with this environment: glibc then returns every freed block over 64 KiB
# to the system, so the resident set size follows the live memory instead of glibc's free lists.
PEAK_RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_of(fn: Callable[[], object], device: str) -> int:
    """Bytes of memory `fn()` needs at its peak beyond what is in use before it: on CUDA the growth of
    torch.cuda.max_memory_allocated; on CPU (Linux) the peak resident set size (VmHWM, reset just
    before) minus the resident size before (see PEAK_RSS_ENV)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set size
    before = _proc_status_kb("VmRSS")
    fn()
    return (_proc_status_kb("VmHWM") - before) * 1024


def synchronize(device: str) -> None:
    """Wait for the work queued on `device`, so that a timing on CUDA covers it (nothing on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seconds_in_turns(runs: Dict[str, Callable[[], object]], warmup: int, repeats: int, device: str) -> Dict[str, List[float]]:
    """Seconds of each timed call of each of `runs` (name -> callable): `warmup` untimed rounds, then
    `repeats` timed rounds of one call of each run. With several runs the calls take turns, so that a
    shared machine speeding up or slowing down during the measurement moves them all alike."""
    times = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def latency_stats(seconds: List[float]) -> Dict[str, float]:
    """Median and p90 of a list of seconds per call."""
    t = sorted(seconds)
    return {"latency_median": statistics.median(t), "latency_p90": t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]}
