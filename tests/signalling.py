"""A signal delivered at a known point of training, as Ctrl-C or a preempted VM would send it."""

import os


def signal_after_calls(trainer, calls: int, signal_number: int) -> None:
    """Make `trainer` send this process `signal_number` right after its `calls`-th compiled
    train-loop call (one step per call at steps_per_loop=1)."""
    make_loop, done = trainer._train_loop_fn, []

    def loop_then_signal(stage, *args):
        loop = make_loop(stage, *args)

        def run(iterator, steps):
            result = loop(iterator, steps)
            done.append(1)
            if len(done) == calls:
                os.kill(os.getpid(), signal_number)
            return result
        return run

    trainer._train_loop_fn = loop_then_signal
