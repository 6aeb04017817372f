"""Stopping on SIGINT/SIGTERM after the current step, agreed by every worker (preemption)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable

import tensorflow as tf

from efficientnet_tf.training.errors import TrainingInterrupted


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM stop training after the current step, with a checkpoint; a
    second one stops at once. With several workers, a signal to any of them (a preempted VM
    gets SIGTERM) stops all of them after the same step.

    Args:
        strategy: the run's strategy (the workers vote through its collectives).
        several_workers: whether more than one worker trains.
        say: prints a line to the user (the chief's console).
    """

    def __init__(self, strategy: tf.distribute.Strategy, several_workers: bool, say: Callable[[str], None]):
        self.strategy = strategy
        self.several_workers = several_workers
        self.say = say
        self.received = None  # the signal's number, once one came
        self._vote = None  # a tf.function: the workers' sum of "I was signalled"

    @contextlib.contextmanager
    def watching(self):
        """Within: the signals request a stop. Only from the main thread (Python delivers signals
        there); the previous handlers come back afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {number: signal.getsignal(number) for number in signals}

        def request_stop(number, frame):
            if self.received is not None:
                raise KeyboardInterrupt
            self.received = number
            self.say(f"\n{signal.Signals(number).name}: stopping after the current step, with a checkpoint "
                     "(again to stop at once)")

        for number in signals:
            signal.signal(number, request_stop)
        try:
            yield
        finally:
            for number in signals:
                signal.signal(number, previous[number])

    def requested(self) -> bool:
        """Whether training stops after this step: this process got SIGINT/SIGTERM, or, with
        several workers, any worker did. Every worker calls this after the same steps, so the
        vote is a collective they all join; they then save the same checkpoint together."""
        if not self.several_workers:
            return self.received is not None
        if self._vote is None:
            strategy = self.strategy

            def vote(signalled):
                votes = strategy.run(lambda: tf.identity(signalled))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None)
            self._vote = tf.function(vote)
        signalled = tf.constant(0.0 if self.received is None else 1.0)
        if float(self._vote(signalled)) == 0:
            return False
        if self.received is None:  # another worker was signalled: stop with it, as if preempted too
            self.received = signal.SIGTERM
            self.say("another worker got a signal: stopping after the current step, with a checkpoint")
        return True

    def stop(self, where: str, checkpoint: str | None):
        """Raise TrainingInterrupted for the signal received, saying where training stopped and
        its checkpoint; the next `fit()` starts listening afresh."""
        number, self.received = self.received, None
        # history.csv already holds exactly the finished epochs, as the checkpoint's epoch counter says.
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(number).name} {where}: checkpoint {checkpoint} and "
            "history.csv are consistent with it; train again with the same settings (the same command) to resume",
            number)
