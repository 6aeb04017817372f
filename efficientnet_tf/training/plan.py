"""What a config resolves to on its dataset: every value a run uses that the config leaves open.

The Trainer and `--dry_run` both read it, so what a dry run shows is what training does.
"""

from __future__ import annotations

import dataclasses

from efficientnet_tf.models.configs import get_config
from efficientnet_tf.training.config import TrainConfig
from efficientnet_tf.training.optim import scaled_learning_rate
from efficientnet_tf.training.stages import Stage, effective_bn_momentum, plan_stages


# An unset batch: the papers' recipe scaled to one machine (64) wherever an epoch at 64 has at least
# MIN_STEPS_PER_EPOCH steps. Below that (under 640 training images) an epoch is one or a few steps:
# too few updates for a run of tens of epochs to learn, and BN's moving statistics cannot settle
# (112 crops of 5 photos, B0 from scratch, 20 epochs: 0.375 held-out top-1 at 64, 0.600 at the 8
# this resolves to; benchmarks/small_data.py, README "Train on your own image folder"). Smaller
# batches then, halving to the first with enough steps; powers of two still divide evenly over 2,
# 4 or 8 replicas, and below 8 images a batch's BN statistics are mostly noise.
DEFAULT_BATCH_SIZE = 64
SMALL_DATA_BATCH_SIZES = (32, 16, 8)
MIN_STEPS_PER_EPOCH = 10


def resolve_batch_size(batch_size: int | None, num_train: int | None) -> int | None:
    """`batch_size` when set, else the batch for `num_train` training images (None: unknown)."""
    if batch_size is not None:
        return batch_size
    if num_train is None:
        return None
    for batch in (DEFAULT_BATCH_SIZE,) + SMALL_DATA_BATCH_SIZES:
        if num_train // batch >= MIN_STEPS_PER_EPOCH:
            return batch
    return SMALL_DATA_BATCH_SIZES[-1]


def with_batch_size(config: TrainConfig, num_train: int | None, resuming: bool = False) -> TrainConfig:
    """`config` with its batch size set: as given; unset, the run's own when `resuming` (a run keeps
    the batch it started with, including the 64 of every run.json from before the batch resolved),
    else resolved from `num_train`."""
    if config.run.batch_size is not None:
        return config
    if resuming:
        from efficientnet_tf.training.rundir import load_run

        return config.replace(batch_size=load_run(config.model_dir)[0].run.batch_size)
    return config.replace(batch_size=resolve_batch_size(None, num_train))


@dataclasses.dataclass(frozen=True)
class RunPlan:
    batch_size: int | None  # None: unset and the dataset's size is not known here
    train_image_size: int  # the last training stage's size
    image_size: int  # evaluation and export
    steps_per_epoch: int | None  # None: the dataset's size is not known here (a dry run, unprepared data)
    bn_momentum: float | None  # None: depends on steps_per_epoch, unknown here
    dropout_rate: float
    base_lr: float | None  # the peak LR: learning_rate per 256 images, scaled to the batch (None: batch unknown)
    stages: tuple[Stage, ...]


def plan_run(config: TrainConfig, native_size: int | None, num_train: int | None) -> RunPlan:
    """The plan for `config` on a dataset of `num_train` training images of `native_size` pixels
    (None: varied sizes; `num_train` None: unknown)."""
    model_config = get_config(config.model.name)
    train_size, eval_size = config.image_sizes(native_size)
    batch = resolve_batch_size(config.run.batch_size, num_train)
    steps = None
    if num_train is not None:
        steps = max(1, num_train // batch)
        if config.run.steps_per_epoch:
            steps = min(steps, config.run.steps_per_epoch)
    network = config.model
    bn_momentum = network.bn_momentum
    if bn_momentum is None and steps is not None:
        bn_momentum = effective_bn_momentum(model_config.bn_momentum, steps)
    dropout = model_config.dropout_rate if network.dropout_rate is None else network.dropout_rate
    stages = tuple(plan_stages(config, train_size, dropout))
    base_lr = None if batch is None else scaled_learning_rate(config.optimizer.learning_rate, batch)
    return RunPlan(batch, stages[-1].image_size, eval_size, steps, bn_momentum, dropout, base_lr, stages)


def describe(config: TrainConfig, plan: RunPlan) -> dict:
    """The resolved values a dry run prints (JSON-ready), each named `resolved_*`."""
    warmup, decay = config.schedule_epochs()
    resolved = {
        "batch_size": plan.batch_size,
        "image_size": plan.image_size,
        "train_image_size": plan.train_image_size,
        "stage_image_sizes": [stage.image_size for stage in plan.stages],
        "stages": [{"epochs": [stage.first_epoch + 1, stage.end_epoch], "image_size": stage.image_size,
                    "dropout_rate": round(stage.dropout_rate, 4), "randaug_magnitude": round(stage.randaug_magnitude, 3),
                    "mixup_alpha": round(stage.mixup_alpha, 4), "frozen": stage.frozen, "lr_scale": stage.lr_scale}
                   for stage in plan.stages],
        "steps_per_epoch": plan.steps_per_epoch,
        "bn_momentum": plan.bn_momentum,
        "dropout_rate": plan.dropout_rate,
        "peak_learning_rate": plan.base_lr,
        "warmup_epochs": warmup,
        "lr_decay_epochs": decay if config.optimizer.lr_schedule == "exponential" else None,
    }
    if plan.steps_per_epoch is not None:
        schedule = config.make_schedule(plan.base_lr, plan.steps_per_epoch)
        total = plan.steps_per_epoch * config.run.epochs
        resolved.update(warmup_steps=round(warmup * plan.steps_per_epoch, 3), total_steps=total,
                        final_learning_rate=float(schedule(total - 1)))
    return {f"resolved_{name}": value for name, value in resolved.items()}
