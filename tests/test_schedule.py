"""The LR schedule, step by step, against its closed form computed in numpy (float64).

Closed form (optim.WarmupSchedule): step s uses the value at t = s + 1; W and D are the warmup
and decay period in steps, T the run's steps. Warmup: peak * t / W while t < W. Then
exponential: peak * rate ** floor(t / D); cosine: from the peak at t = W to 0 at t = T;
constant: the peak.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf.training.optim import WarmupSchedule
from efficientnet_tf.training import TrainConfig

PEAK = 0.004  # 0.016 per 256 at batch 64
CEILING = float(np.float32(PEAK))  # the peak as the float32 schedule holds it: nothing may exceed it
TOLERANCE = dict(rtol=1e-5, atol=1e-6 * PEAK)  # float32 pow and cos (cos near pi cancels: absolute)
PAPER_END_FRACTION = 0.97 ** (350 / 2.4)  # 1.19% of the peak: where the papers' run ends

# (epochs, steps per epoch): the short runs, the README's digits command (1,437 train
# images at batch 64: 22 steps x 15 epochs) and the papers' 350 epochs with few steps.
RUNS = [(2, 3), (1, 20), (15, 22), (350, 3)]


def closed_form(kind, epochs, steps_per_epoch, warmup_epochs, decay_epochs, rate=0.97):
    steps = epochs * steps_per_epoch
    t = np.arange(steps, dtype=np.float64) + 1.0
    warmup, period = warmup_epochs * steps_per_epoch, decay_epochs * steps_per_epoch
    if kind == "exponential":
        after = PEAK * rate ** np.floor(t / period)
    elif kind == "cosine":
        progress = np.clip((t - warmup) / (steps - warmup), 0.0, 1.0)
        after = 0.5 * PEAK * (1.0 + np.cos(math.pi * progress))
    else:
        after = np.full_like(t, PEAK)
    return np.where(t < warmup, PEAK * t / warmup, after) if warmup > 0 else after


def schedule_values(schedule, steps):
    return schedule(tf.range(steps, dtype=tf.int64)).numpy().astype(np.float64)


@pytest.mark.parametrize("kind", ["exponential", "cosine", "constant"])
@pytest.mark.parametrize("epochs, steps_per_epoch", RUNS)
def test_every_step_matches_the_closed_form_with_the_papers_shape(kind, epochs, steps_per_epoch):
    config = TrainConfig.from_settings(epochs=epochs, lr_schedule=kind)
    warmup_epochs, decay_epochs = config.schedule_epochs()
    values = schedule_values(config.make_schedule(PEAK, steps_per_epoch), epochs * steps_per_epoch)
    expected = closed_form(kind, epochs, steps_per_epoch, warmup_epochs, decay_epochs)
    np.testing.assert_allclose(values, expected, **TOLERANCE)
    assert 0 < values[0] <= CEILING  # the old (step + 1) / W overshot up to 11.7x here
    assert values.max() <= CEILING
    warmup_steps = warmup_epochs * steps_per_epoch
    in_warmup = values[: int(np.sum(np.arange(len(values)) + 1 < warmup_steps))]
    assert np.all(np.diff(in_warmup) > 0)  # rising all through the warmup
    if kind == "exponential":
        # The last step ends where the papers' run ends, within one x0.97 period, for any length
        # (the old one-step clamp left 2 x 3 steps at 86% of the peak).
        assert values[-1] / PEAK == pytest.approx(0.97 ** 145, rel=1e-5)
        assert values[-1] / PEAK == pytest.approx(PAPER_END_FRACTION, rel=0.031)
    elif kind == "cosine":
        assert values[-1] == 0.0
    else:
        assert values[-1] == pytest.approx(PEAK, rel=1e-6)


@pytest.mark.parametrize("kind", ["exponential", "cosine", "constant"])
@pytest.mark.parametrize("warmup_epochs, decay_epochs", [(5, 2.4), (1, 0.5), (0, 1), (0.5, 3)])
def test_explicit_values_are_taken_literally(kind, warmup_epochs, decay_epochs):
    """The README digits command's length with values given explicitly (recipes do that)."""
    epochs, steps_per_epoch = 15, 22
    config = TrainConfig.from_settings(epochs=epochs, lr_schedule=kind, warmup_epochs=warmup_epochs, lr_decay_epochs=decay_epochs)
    values = schedule_values(config.make_schedule(PEAK, steps_per_epoch), epochs * steps_per_epoch)
    np.testing.assert_allclose(values, closed_form(kind, epochs, steps_per_epoch, warmup_epochs, decay_epochs),
                               **TOLERANCE)
    assert values.max() <= CEILING
    if warmup_epochs == 5 and kind != "exponential":
        assert values[5 * 22 - 1] == pytest.approx(PEAK, rel=1e-6)  # the ramp ends on the peak
        assert values[5 * 22 - 2] == pytest.approx(PEAK * (5 * 22 - 1) / (5 * 22), rel=1e-6)


def test_fractional_periods_are_not_rounded_to_a_step():
    """2.5 warmup steps and 0.25-step decay periods, read by hand: t = 1, 2 ramp (0.4, 0.8 of
    the peak), then x0.5 four times per step."""
    schedule = WarmupSchedule(1.0, steps_per_epoch=10, total_steps=5, warmup_epochs=0.25, decay_rate=0.5,
                              decay_epochs=0.025)
    expected = [1 / 2.5, 2 / 2.5, 0.5 ** 12, 0.5 ** 16, 0.5 ** 20]
    np.testing.assert_allclose(schedule_values(schedule, 5), expected, rtol=1e-6)


def test_scalar_steps_and_the_optimizer_counter_give_the_same_values():
    schedule = TrainConfig.from_settings(epochs=15).make_schedule(PEAK, 22)
    vector = schedule_values(schedule, 330)
    for step in (0, 4, 5, 163, 329):
        assert float(schedule(tf.constant(step, tf.int64))) == pytest.approx(vector[step], rel=1e-7)
        assert float(schedule(step)) == pytest.approx(vector[step], rel=1e-7)


def test_schedule_survives_keras_serialization():
    schedule = WarmupSchedule(0.1, 7, 70, "cosine", warmup_epochs=1.5, min_lr=0.001)
    clone = WarmupSchedule.from_config(schedule.get_config())
    np.testing.assert_array_equal(schedule_values(clone, 70), schedule_values(schedule, 70))


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps_per_epoch=0), "steps_per_epoch must be >= 1, got 0"),
    (dict(total_steps=0), "total_steps must be >= 1, got 0"),
    (dict(warmup_epochs=-1), "warmup_epochs must be >= 0, got -1"),
    (dict(decay_epochs=0), "decay_epochs must be > 0, got 0"),
    (dict(decay_rate=1.5), r"decay_rate must be in \(0, 1\], got 1.5"),
    (dict(schedule="step"), "unknown lr_schedule 'step'; choose from exponential, cosine, constant"),
])
def test_bad_schedule_arguments_name_the_value(kwargs, message):
    arguments = dict(dict(base_lr=0.1, steps_per_epoch=10, total_steps=100), **kwargs)
    with pytest.raises(ValueError, match=message):
        WarmupSchedule(**arguments)
