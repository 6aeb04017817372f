"""The learning rate of every step of a run, across resumes that change its schedule.

A schedule is planned for the run's length: unset warmup and decay periods scale with `epochs`
(`TrainConfig.schedule_epochs`) and a cosine anneals over the whole run. A longer run is another
curve, so extending a finished run would move the LR at once (a 6-epoch digits run of the default
schedule ended at 4.83e-05; extended to 8 epochs, its 7th ended at 8.36e-05) and the plot of the
new curve would misstate the epochs already trained. Instead a resume that changes the run's
length, and not the schedule's own settings, continues from the LR reached: the remaining steps go
from it to the new schedule's end value, geometrically (exponential schedule) or along a half
cosine (cosine). A resume that changes a schedule setting (SCHEDULE_SETTINGS) asked for that
schedule: it applies from the resume step. Either way the run's schedule is pieces, each taking
over at a step, kept in run.json ("lr_schedule"), so the LR of every step, trained or to come, is
what the run applies.
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from efficientnet_tf.advice import Arg, advised
from efficientnet_tf.settings import SettingError
from efficientnet_tf.training.optim import WarmupSchedule

SCHEDULE_SETTINGS = ("learning_rate", "lr_schedule", "warmup_epochs", "lr_decay_rate", "lr_decay_epochs")


class Continuation:
    """Steps `from_step` .. `end_step - 1`, counted as `WarmupSchedule` counts (step s has the
    value at its end, t = s + 1): `from_lr` at t = from_step, which is the LR of the step before,
    down to `end_lr` at t = end_step, the last step."""

    def __init__(self, from_step: int, from_lr: float, end_lr: float, end_step: int, shape: str):
        self.from_step, self.end_step = int(from_step), int(end_step)
        self.from_lr, self.end_lr, self.shape = float(from_lr), float(end_lr), shape

    def __call__(self, step):
        t = tf.cast(step, tf.float32) + 1.0
        progress = tf.clip_by_value((t - self.from_step) / max(self.end_step - self.from_step, 1), 0.0, 1.0)
        if self.shape == "cosine":
            return self.end_lr + 0.5 * (self.from_lr - self.end_lr) * (1.0 + tf.cos(math.pi * progress))
        return self.from_lr * tf.pow(self.end_lr / self.from_lr if self.from_lr > 0 else 0.0, progress)

    def to_json(self) -> dict:
        return {"from_lr": self.from_lr, "end_lr": self.end_lr, "end_step": self.end_step, "shape": self.shape}


class RunSchedule:
    """A run's LR at any step: `pieces` [(first step, schedule)], each applying from its first step
    on (the first from step 0). A run never resumed with another schedule has one piece."""

    def __init__(self, pieces):
        self.pieces = list(pieces)

    def __call__(self, step):
        lr = self.pieces[0][1](step)
        for first, piece in self.pieces[1:]:
            lr = tf.where(tf.cast(step, tf.int64) >= first, tf.cast(piece(step), lr.dtype), lr)
        return lr

    @property
    def resumed_at(self) -> list[int]:
        """The steps from which another piece applies."""
        return [first for first, _ in self.pieces[1:]]

    def to_json(self) -> list[dict]:
        return [{"from_step": first, **({"schedule": piece.get_config()} if isinstance(piece, WarmupSchedule)
                                        else {"continuation": piece.to_json()})} for first, piece in self.pieces]

    @classmethod
    def from_json(cls, entries) -> RunSchedule:
        return cls([(entry["from_step"], WarmupSchedule(**entry["schedule"]) if "schedule" in entry
                     else Continuation(entry["from_step"], **entry["continuation"])) for entry in entries])


def run_schedule(config, info: dict, steps_per_epoch: int) -> RunSchedule:
    """The schedule the run of run.json `info` (its config `config`) trained and trains with."""
    if "lr_schedule" in info:
        return RunSchedule.from_json(info["lr_schedule"])
    return RunSchedule([(0, config.make_schedule(info["base_lr"], steps_per_epoch))])  # runs before lr_schedule


def _same_curve(a: WarmupSchedule, b: WarmupSchedule) -> bool:
    ours, theirs = a.get_config(), b.get_config()
    if "cosine" not in (a.schedule, b.schedule):  # only a cosine depends on the run's length by itself
        ours.pop("total_steps"), theirs.pop("total_steps")
    return ours == theirs


def resumed_schedule(config, base_lr: float, steps_per_epoch: int, resume_step: int, info: dict | None = None,
                     stored=None, constant_from: int | None = None) -> tuple[RunSchedule, dict | None]:
    """The schedule `config` trains with from optimizer step `resume_step` of the run whose
    run.json was `info` (config `stored`; None: a new run), and what changed at that step, for
    run.json's "resumes" and `change_line` (None: the run's schedule goes on as it was).

    A change of length alone continues from the LR reached; `SettingError` (epochs) when that is
    0 (a finished cosine) and steps before `constant_from` (where the quantization-aware epochs'
    constant LR takes over) would train with it."""
    planned = config.make_schedule(base_lr, steps_per_epoch)
    if info is None or resume_step == 0:
        return RunSchedule([(0, planned)]), None
    before = run_schedule(stored, dict(info, base_lr=info.get("base_lr", base_lr)), steps_per_epoch)
    was = stored.make_schedule(info.get("base_lr", base_lr), steps_per_epoch)
    if _same_curve(was, planned) or resume_step >= planned.total_steps:
        return before, None
    old, new = stored.settings(), config.settings()
    changed = [name for name in SCHEDULE_SETTINGS if old[name] != new[name]]
    reached = float(before(resume_step - 1))
    record = {"from_step": resume_step, "reached": reached}
    kept = [(first, piece) for first, piece in before.pieces if first < resume_step]
    if changed or resume_step < was.warmup_steps:  # asked for, or the reached LR is a warmup's
        piece = planned
        record.update(schedule_changed=changed or ["epochs (during the warmup)"], new_lr=float(planned(resume_step)))
    else:
        if reached <= 0 and resume_step < (planned.total_steps if constant_from is None else constant_from):
            raise advised(functools.partial(SettingError, "epochs"),
                          f"the run's LR had reached 0 at step {resume_step} (the end of its {was.schedule} "
                          "schedule): more epochs would train with LR 0. Give them a learning rate: ",
                          Arg("learning_rate", "X", placeholder=True), f" other than the run's "
                          f"{stored.optimizer.learning_rate:g} (per 256 images; the new {planned.schedule} schedule "
                          f"then applies from step {resume_step}), or train a new run")
        end_lr = min(float(planned(planned.total_steps - 1)), reached)  # an extension never raises the LR
        shape = "cosine" if planned.schedule == "cosine" else "geometric"
        piece = Continuation(resume_step, reached, end_lr, planned.total_steps, shape)
        record.update(continues_to=end_lr, end_step=planned.total_steps, shape=shape,
                      instead_of=float(planned(resume_step)))
    return RunSchedule(kept + [(resume_step, piece)]), record


def change_line(record: dict, epochs: tuple[int, int]) -> str:
    """One line saying what a resume did to the LR (`record` from `resumed_schedule`)."""
    step, reached = record["from_step"], record["reached"]
    if "continues_to" in record:
        if record["continues_to"] >= reached:  # the papers' shape ends at one share of the peak at any length
            how = f"stays at the {reached:.3g} reached at step {step}, where the {epochs[1]}-epoch schedule ends too"
        else:
            how = (f"continues from the {reached:.3g} reached at step {step} and decays ({record['shape']}) to "
                   f"{record['continues_to']:.3g} at step {record['end_step']}")
        return (f"epochs {epochs[0]} -> {epochs[1]}: the LR {how}, instead of going on at that schedule's "
                f"{record['instead_of']:.3g} (run.json records it)")
    return (f"{', '.join(record['schedule_changed'])} changed: from step {step} the new schedule applies, LR "
            f"{reached:.3g} -> {record['new_lr']:.3g} (run.json records it)")
