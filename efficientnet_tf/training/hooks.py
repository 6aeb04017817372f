"""Hooks: what the trainer calls at named points besides training (figures, for one).

The loop knows when an epoch or a fit ends, not what is drawn or sent then: a hook does that.
`Trainer(hooks=...)` takes a list; the default draws the run's plots (`training.report.RunPlots`)."""

from __future__ import annotations


class TrainingHook:
    """The points a hook is called at; each default does nothing."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        """After an epoch's checkpoint and history row (`row`: history.csv's columns), on the chief."""

    def on_fit_end(self, trainer, figures: dict) -> list[str]:
        """After `fit()` trained and wrote its report, on the chief only; `figures`: the task's
        arrays the report's figures are drawn from (a confusion matrix, verification curves).
        Returns the paths of the files it wrote."""
        return []
