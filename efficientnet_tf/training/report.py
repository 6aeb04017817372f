"""A run's plots: drawn at the end of training (a hook), or redrawn later from what its directory holds."""

from __future__ import annotations

import logging

from efficientnet_tf.models.configs import get_config
from efficientnet_tf.training.hooks import TrainingHook
from efficientnet_tf.training.resume_lr import run_schedule
from efficientnet_tf.training.rundir import load_run
from efficientnet_tf.training.stages import augmented_batch, plan_stages, stage_pipeline

log = logging.getLogger(__name__)


class RunPlots(TrainingHook):
    """At the end of `fit()`: history, LR schedule, progressive stages, the task's figures
    (confusion matrix; an embedding run's ROC curve and similarity histograms) and a grid of
    augmented training images, as PNGs in the run directory. A figure that cannot be drawn is
    a warning: it must not fail a finished run."""

    def on_fit_end(self, trainer, figures: dict) -> list[str]:
        from efficientnet_tf import plots

        try:
            return plots.save_run_plots(
                trainer.run_dir.path, schedule=trainer.planned_lr,
                total_steps=trainer.steps_per_epoch * trainer.config.run.epochs,
                steps_per_epoch=trainer.steps_per_epoch, class_names=trainer.source.class_names,
                augmented=trainer.augmented_batch(), **figures)
        except (OSError, ValueError, RuntimeError) as err:
            log.warning("plots not written (%s: %s)", type(err).__name__, err)
            return []


def replot_run(model_dir: str, with_images: bool = True) -> list[str]:
    """Redraw a run's plots from history.csv, run.json and confusion_matrix.npy (embedding runs:
    verification_curves.npz); returns the
    paths written. The augmented-image grid needs the dataset; when it cannot be loaded it is
    left out with a warning."""
    from efficientnet_tf import plots

    config, info = load_run(model_dir)
    steps_per_epoch = int(info.get("steps_per_epoch", 1))
    schedule = run_schedule(config, info, steps_per_epoch) if "base_lr" in info else None  # as applied
    augmented = None
    if with_images:
        try:
            network = config.model
            dropout = get_config(network.name).dropout_rate if network.dropout_rate is None else network.dropout_rate
            train_size = int(info.get("train_image_size", info["image_size"]))  # runs before V2 sizes: one size
            first_stage = plan_stages(config, train_size, dropout)[0]  # as the end of training draws it
            augmented = augmented_batch(config.load_source("skip"), stage_pipeline(config, first_stage, True))
        except (OSError, ValueError) as err:
            log.warning("augmented-image grid left out: dataset %s unavailable (%s)", config.data.dataset, err)
    return plots.save_run_plots(model_dir, schedule=schedule, total_steps=steps_per_epoch * config.run.epochs,
                                steps_per_epoch=steps_per_epoch, class_names=info.get("class_names"),
                                augmented=augmented)
