"""The benchmark scripts keep working (their --quick mode); figures are for people, not asserts."""

import re
import subprocess
import sys


def test_input_pipeline_benchmark_quick_prints_both_rates_and_ratio():
    out = subprocess.run([sys.executable, "benchmarks/input_pipeline.py", "--quick"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    pipeline = float(re.search(r"pipeline .*?([\d.]+) images/s", out).group(1))
    model = float(re.search(r"model train step:\s+([\d.]+) images/s", out).group(1))
    ratio = float(re.search(r"ratio pipeline/model: ([\d.]+)x", out).group(1))
    assert pipeline > 0 and model > 0
    assert abs(ratio - pipeline / model) < 0.01 * ratio + 0.01
