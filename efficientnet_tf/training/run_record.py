"""What a fit writes to and reads from the run directory besides checkpoints: run.json (with its
resumes), history.csv and TensorBoard rows per epoch, the LR schedule a resume continues, and
the lines that describe the run when training starts."""

from __future__ import annotations

import time

import tensorflow as tf

from efficientnet_tf.training.resume_lr import change_line, resumed_schedule
from efficientnet_tf.training.rundir import RunDir, load_run, recorded_changes, run_info


def resumed_schedule_of(trainer):
    """(the schedule from the restored step on, the LR change to record or None): the run's own,
    or continued from the LR it reached when this resume changes its length (`resume_lr`)."""
    stored, info = load_run(trainer.run_dir.path) if trainer.run_dir.exists() else (None, None)
    steps = int(trainer.optimizer_steps().numpy())
    return resumed_schedule(trainer.config, trainer.base_lr, trainer.steps_per_epoch, steps, info, stored,
                            trainer.int8_aware.first_epoch * trainer.steps_per_epoch)


def write_run_info(trainer, lr_change: dict | None) -> None:
    """run.json: the settings, what the plan resolved, and each resume that changed a setting."""
    config, source = trainer.config, trainer.source
    resumes = []
    if trainer.previous_info is not None:
        stored, _ = load_run(trainer.run_dir.path)
        resumes = list(trainer.previous_info.get("resumes", []))
        changed = recorded_changes(stored, config)
        if changed:
            resumes.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changed,
                            **({"lr": lr_change} if lr_change else {})})
        if lr_change:
            trainer.say(change_line(lr_change, (stored.run.epochs, config.run.epochs)))
    trainer.run_dir.write_info(run_info(
        config,
        num_classes=source.num_classes,
        class_names=list(source.class_names),
        image_size=trainer.image_size,  # evaluation and export size
        train_image_size=trainer.stages[-1].image_size,  # the last training stage's size
        split=getattr(source, "split_description", ""),
        steps_per_epoch=trainer.steps_per_epoch,
        base_lr=trainer.base_lr,
        lr_schedule=trainer.lr.schedule.to_json(),
        **trainer.task.run_info(source),
        **({"resumes": resumes} if resumes else {}),
    ))


def write_epoch(run_dir: RunDir, history: list[dict], row: dict, writer) -> None:
    """history.csv with the epoch's row, and its TensorBoard scalars (the chief's): the training
    figures and the task's validation columns (`val_*`)."""
    run_dir.write_history(history)
    with writer.as_default(step=int(row["epoch"])):
        for key in ("loss", "accuracy", "lr", "image_size", *(k for k in row if k.startswith("val_"))):
            tf.summary.scalar(key, float(row[key]))
    writer.flush()


def describe(trainer, start_epoch: int) -> list[str]:
    """The lines a fit starts with: data, replicas, batch, sizes, LR, and where it resumes."""
    config, source = trainer.config, trainer.source
    lines = [f"{config.model.name} on {config.data.dataset}: {source.num_train} train / {source.num_eval} eval "
             f"images, {source.num_classes} classes; {trainer.replicas} replica(s) on {trainer.device}, policy "
             f"{trainer.policy}, batch {config.run.batch_size}, {trainer.steps_per_epoch} steps/epoch, BN momentum "
             f"{trainer.bn_momentum:.3f}, XLA {'on' if trainer.jit_compile else 'off'}"]
    split = getattr(source, "split_description", "")
    if split:
        lines.append(f"data: {split}")
    stages = trainer.stages
    lines.append(f"image size: train {stages[-1].image_size}"
                 + (f" (stages {', '.join(str(s.image_size) for s in stages)})" if len(stages) > 1 else "")
                 + f", eval/export {trainer.image_size}")
    warmup, decay = config.schedule_epochs()
    optimizer = config.optimizer
    decay_text = f", x{optimizer.lr_decay_rate:g} every {decay:.3g} epochs"
    lines.append(f"LR {trainer.base_lr:.3g} peak ({optimizer.learning_rate:g} per 256), {optimizer.lr_schedule} "
                 f"schedule, warmup {warmup:.3g} epochs" + (decay_text if optimizer.lr_schedule == "exponential" else ""))
    resumed_from = trainer.state.resumed_from
    if start_epoch >= config.run.epochs:
        lines.append(f"{resumed_from}: all {config.run.epochs} epochs are done (more epochs extend the run)")
    elif start_epoch:
        lines.append(f"resuming from {resumed_from}: epoch {start_epoch + 1} of {config.run.epochs}")
    return lines
