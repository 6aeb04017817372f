"""How a run can end early, as types a caller (the CLI, a notebook) can catch."""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """Loss became NaN/inf: training stopped, the last good checkpoint is kept."""

    setting = "learning_rate"  # the setting to change first (the CLI names its flag)


class UnreadableCheckpoints(RuntimeError):
    """Checkpoints exist but none of them can be restored."""
