"""`python main.py ARGS` for tests, run in this process: what the command line decides, prints and
returns, without a new Python, TensorFlow and package import each time (5-10 s a call on 2 cores).

A test where the process itself is the point (a signal's exit status, TensorFlow's startup lines
on stderr, absl's own handling of a flag it cannot parse) runs `main.py` in a subprocess instead:
`run_main(..., isolated=True)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Result:
    """What a run of main.py gave: subprocess.CompletedProcess's fields the tests read."""

    returncode: int
    stdout: str
    stderr: str


def run_main(*args, cwd: str | os.PathLike = ROOT, isolated: bool = False, timeout: float = 900) -> Result:
    """Run main.py with `args` in `cwd`; its exit status and output. Flags go back to their
    defaults afterwards, as a new process would have them. `isolated`: in a new process."""
    if isolated:  # at main.py's own default log level, as a user's shell runs it
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        result = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *map(str, args)], capture_output=True,
                                text=True, timeout=timeout, cwd=cwd, env=env)
        return Result(result.returncode, result.stdout, result.stderr)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import main
    from absl import app, flags

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    main.FLAGS.unparse_flags()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                remaining = main.FLAGS([os.path.join(ROOT, "main.py"), *map(str, args)])
                code = main.main(remaining) or 0
            except (flags.Error, app.UsageError) as error:  # absl.app.run's answer: the message, exit 1
                print(f"FATAL Flags parsing error: {error}", file=sys.stderr)
                code = 1
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(previous)
        main.FLAGS.unparse_flags()
    return Result(code, out.getvalue(), err.getvalue())
