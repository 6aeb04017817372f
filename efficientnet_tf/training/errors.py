"""How a run can end early, as types a caller (the CLI, a notebook) can catch."""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """Loss became NaN/inf: training stopped, the last good checkpoint is kept."""

    setting = "learning_rate"  # the setting to change first (the CLI names its flag)


class UnreadableCheckpoints(RuntimeError):
    """Checkpoints exist but none of them can be restored."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped training after a step; a checkpoint and history.csv consistent with
    that step were written, so the next fit() (the same command) continues from it."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
