"""The benchmark scripts keep working (their --quick mode); figures are for people, not asserts."""

import re
import subprocess
import sys

import pytest


def test_input_pipeline_benchmark_quick_prints_both_rates_and_ratio():
    out = subprocess.run([sys.executable, "benchmarks/input_pipeline.py", "--quick"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    pipeline = float(re.search(r"pipeline .*?([\d.]+) images/s", out).group(1))
    model = float(re.search(r"model train step:\s+([\d.]+) images/s", out).group(1))
    ratio = float(re.search(r"ratio pipeline/model: ([\d.]+)x", out).group(1))
    assert pipeline > 0 and model > 0
    assert abs(ratio - pipeline / model) < 0.01 * ratio + 0.01


def _run(script, *args, timeout=600):
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_training_throughput_quick_reports_consistent_ratios():
    out = _run("training_throughput.py", "--quick")
    rows = re.findall(r"efficientnet-b0\s+32\s+(off|on)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)%", out)
    assert [r[0] for r in rows] == ["off", "on"]
    for _, ours, reference, ratio, _ in rows:
        assert abs(float(ratio) - float(ours) / float(reference)) < 0.01
    assert re.search(r"peak: [\d.]+ GFLOP/s", out)


def test_inference_quick_times_every_format_at_both_batches():
    out = _run("inference.py", "--quick")
    for batch in (1, 32):
        for name in ("keras", "saved_model", "tflite_float32", "tflite_float16", "tflite_int8"):
            assert re.search(rf"^{name}\s+{batch}\s+[\d.]+\s+[\d.]+$", out, re.M), (name, batch)
        assert re.search(rf"ratio tflite_int8/saved_model efficientnet-lite0 batch {batch}: [\d.]+x", out)


def test_progressive_quick_compares_both_runs():
    out = _run("progressive.py", "--quick")
    assert re.search(r"fixed\s+sizes \[48\]", out) and re.search(r"progressive\s+sizes \[32, 48\]", out)
    assert re.search(r"ratio train time fixed/progressive \(whole budget\): [\d.]+x", out)


@pytest.mark.slow
def test_lite_int8_agrees_with_float_on_trained_digits():
    """Issue acceptance: full-integer int8 Lite0 agrees with the float model on >= 98% of the
    eval split after a real 15-epoch training run."""
    out = _run("quantization.py", "--models", "efficientnet-lite0", "--formats", "int8", timeout=1200)
    agreement = float(re.search(r"^efficientnet-lite0\s+([\d.]+)$", out, re.M).group(1))
    assert agreement >= 0.98, out
