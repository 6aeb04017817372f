"""Command line for efficientnet_tf. Flags are parsed here only; the package is a library.

    python main.py --mode=summary --model=all
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_enum("mode", "summary", ["summary"], "What to do. summary: params, multiply-adds and default resolution.")
flags.DEFINE_string("model", "efficientnet-b0", "Model name (see --mode=summary --model=all), or 'all' for summary.")
flags.DEFINE_integer("image_size", None, "Input size; default: the model's own resolution.", lower_bound=32)


def run_summary() -> None:
    from efficientnet_tf import list_models
    from efficientnet_tf.flops import model_summary

    names = list_models() if FLAGS.model == "all" else [FLAGS.model]
    print(f"{'model':<20} {'res':>5} {'params':>13} {'GMACs':>8}")
    for name in names:
        s = model_summary(name, FLAGS.image_size)
        print(f"{s['model']:<20} {s['resolution']:>5} {s['params']:>13,} {s['macs'] / 1e9:>8.3f}", flush=True)


MODES = {"summary": run_summary}


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        MODES[FLAGS.mode]()
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main)
