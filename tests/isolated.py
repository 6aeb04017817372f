"""Run a test's body in a fresh Python process.

TensorFlow keeps the memory it has used on the CPU (allocator and oneDNN caches) for the life of
the process: a check that builds B8 at 599 px leaves a pytest worker ~10 GB larger for every
later test. Such checks run in a child process, which gives the memory back when it exits.
"""

import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def run_isolated(function, *args, timeout: float = 1200) -> None:
    """Call `function(*args)` (a module-level function of a test module; arguments given by their
    repr) in a new process; an AssertionError or any exception there fails the calling test with
    the child's traceback."""
    call = f"{function.__module__}.{function.__name__}({', '.join(map(repr, args))})"
    code = (f"import sys; sys.path[:0] = [{TESTS!r}, {ROOT!r}]; import conftest, {function.__module__}; {call}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{call} failed in its own process (exit {result.returncode}):\n{result.stderr[-4000:]}")
