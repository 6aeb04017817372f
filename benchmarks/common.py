"""Shared by the benchmark scripts: interleaved timing, the machine line, peak FLOP/s."""

from __future__ import annotations

import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def interleaved(candidates: dict, calls: int, rounds: int, items_per_call: int) -> dict[str, float]:
    """Median items/s of each candidate (name -> no-arg callable), measured round-robin so that
    machine noise (other processes, frequency changes) hits every candidate alike."""
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append(items_per_call * calls / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{cpu}, {os.cpu_count()} logical CPUs" + (f", {len(gpus)} GPU(s)" if gpus else "") + f", TF {tf.__version__}"


def measured_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """Peak FLOP/s as the best of a few large float32 matrix products: what this machine's BLAS
    actually reaches (a theoretical peak needs the clock and FMA width, which VMs hide)."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
