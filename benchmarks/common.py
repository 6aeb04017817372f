"""Shared by the benchmark scripts: interleaved timing, the machine line, peak FLOP/s."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def interleaved(candidates: dict, calls: int, rounds: int, items_per_call: int,
                samples: dict | None = None, count_items=None) -> dict[str, float]:
    """Median items/s of each candidate (name -> no-arg callable), measured round-robin so that
    machine noise (other processes, frequency changes) hits every candidate alike.

    `count_items(result)`, when given, counts the items each call really produced (rows of its
    output) instead of trusting `items_per_call`. `samples`, when given, receives each
    candidate's raw rounds ({"items", "seconds"} per round), from which the medians can be
    recomputed (the scripts' --json output)."""
    rounds_of = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            items = 0
            start = time.perf_counter()
            for _ in range(calls):
                result = fn()
                items += items_per_call if count_items is None else count_items(result)
            rounds_of[name].append({"items": items, "seconds": time.perf_counter() - start})
    if samples is not None:
        samples.update(rounds_of)
    return {name: median_rate(values) for name, values in rounds_of.items()}


def median_rate(rounds: list[dict]) -> float:
    """Median of items / seconds over measured rounds."""
    return statistics.median(r["items"] / r["seconds"] for r in rounds)


def write_json(path: str | None, payload: dict) -> None:
    """The figures a script printed, with their raw rounds, for tests and notebooks (--json)."""
    if not path:
        return
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


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
