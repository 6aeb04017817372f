"""A resumed run keeps the LR it had reached when its length changes (training/resume_lr.py), run.json
records what changed, and lr_schedule.png draws the LRs the run applied."""

import json
import os

import numpy as np
import pytest

from efficientnet_tf.settings import SettingError
from efficientnet_tf.training import TrainConfig, Trainer
from efficientnet_tf.training.rundir import read_history

BATCH, STEPS = 32, 2
BASE_LR = 0.016 * BATCH / 256  # the default learning_rate per 256 images, scaled to the batch


def paper_lr(t, epochs, steps_per_epoch=STEPS, base=BASE_LR):
    """The default exponential schedule at t steps into a run (the value of step t - 1), written out
    from the papers' shape: 5 of 350 epochs of linear warmup, x0.97 every 2.4 of 350 epochs."""
    warmup = 5.0 * epochs / 350 * steps_per_epoch
    period = 2.4 * epochs / 350 * steps_per_epoch
    return base * t / warmup if t < warmup else base * 0.97 ** np.floor(t / period + 1e-4)


def _config(model_dir, **changes):
    return TrainConfig.from_settings(**dict(dict(model="efficientnet-lite0", dataset="digits", model_dir=model_dir,
                                                 epochs=2, steps_per_epoch=STEPS, batch_size=BATCH, image_size=32,
                                                 seed=0), **changes))


@pytest.mark.slow
def test_extending_a_finished_run_continues_from_the_lr_it_reached(tmp_path, capsys, monkeypatch):
    model_dir = str(tmp_path / "run")
    Trainer(_config(model_dir), verbose=False).fit(validate=False)
    reached = float(read_history(model_dir)[-1]["lr"])
    assert reached == pytest.approx(paper_lr(4, epochs=2), rel=1e-5)  # the last step of the 2-epoch run

    trainer = Trainer(_config(model_dir, epochs=4), verbose=True)
    trainer.fit(validate=False)
    resume_step = 2 * STEPS
    # The 4-epoch schedule would have gone on at 0.97^-36 = 3x the LR reached: the extension starts there.
    assert paper_lr(resume_step + 1, epochs=4) > 2.9 * reached
    first_step_lr = float(trainer.lr.schedule(resume_step))
    assert first_step_lr == pytest.approx(reached, rel=1e-5)
    # From the LR reached, geometrically to the 4-epoch schedule's end (as low as the reached one,
    # the papers' shape ends at the same share of the peak at any length), at each epoch's end.
    end_lr = min(paper_lr(4 * STEPS, epochs=4), reached)
    logged = [float(row["lr"]) for row in read_history(model_dir)]
    expected = [reached * (end_lr / reached) ** ((t - resume_step) / (4 * STEPS - resume_step)) for t in (6, 8)]
    np.testing.assert_allclose(logged[2:], expected, rtol=1e-5)

    run = json.loads(open(os.path.join(model_dir, "run.json")).read())
    (resume,) = run["resumes"]
    assert resume["changed"] == {"epochs": [2, 4]}
    assert resume["lr"]["from_step"] == resume_step and resume["lr"]["shape"] == "geometric"
    assert resume["lr"]["reached"] == pytest.approx(reached, rel=1e-6)
    assert resume["lr"]["continues_to"] == pytest.approx(end_lr, rel=1e-5)
    assert resume["lr"]["instead_of"] == pytest.approx(paper_lr(resume_step + 1, epochs=4), rel=1e-5)
    assert [piece["from_step"] for piece in run["lr_schedule"]] == [0, resume_step]
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epochs 2 -> 4")]
    assert said == [f"epochs 2 -> 4: the LR stays at the {reached:.3g} reached at step 4, where the 4-epoch schedule "
                    f"ends too, instead of going on at that schedule's {paper_lr(5, epochs=4):.3g} "
                    "(run.json records it)"]

    # lr_schedule.png, redrawn from the run directory: its curve is what history.csv logged, at
    # every epoch's end, the 2 epochs before the extension included.
    from efficientnet_tf import plots
    from efficientnet_tf.training.report import replot_run

    drawn = []
    original = plots.plot_lr_schedule
    monkeypatch.setattr(plots, "plot_lr_schedule", lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    replot_run(model_dir, with_images=False)
    curve, resumed_line, logged_points = drawn[0].axes[0].get_lines()
    at_epoch_ends = curve.get_ydata()[[STEPS * (epoch + 1) - 1 for epoch in range(4)]]
    np.testing.assert_allclose(at_epoch_ends, logged, rtol=1e-5)
    np.testing.assert_allclose(curve.get_ydata()[:4], [paper_lr(t, epochs=2) for t in range(1, 5)], rtol=1e-5)
    assert list(resumed_line.get_xdata()) == [2, 2]  # marked where the extension starts (epoch 2)
    np.testing.assert_allclose(logged_points.get_ydata(), logged)


def test_the_continuation_follows_the_schedules_shape_from_the_lr_reached():
    """A cosine run stopped at step 5 of 8, resumed as a 6-epoch run: from the LR of step 4 along a
    half cosine to 0 at the new end, instead of the 6-epoch cosine's value at step 5."""
    from efficientnet_tf.training.resume_lr import change_line, resumed_schedule

    stored = _config("unused", epochs=4, lr_schedule="cosine", warmup_epochs=1)
    extended = stored.replace(epochs=6)
    info = {"base_lr": BASE_LR}
    schedule, record = resumed_schedule(extended, BASE_LR, STEPS, 5, info, stored)

    def cosine(t, total, warmup=STEPS):  # the value of step t - 1 of a cosine run of `total` steps
        if t < warmup:
            return BASE_LR * t / warmup
        return BASE_LR * 0.5 * (1 + np.cos(np.pi * (t - warmup) / (total - warmup)))

    reached = cosine(5, 8)
    expected = [cosine(t, 8) for t in range(1, 6)] + [
        0.5 * reached * (1 + np.cos(np.pi * (t - 5) / (12 - 5))) for t in range(6, 13)]
    np.testing.assert_allclose([float(schedule(step)) for step in range(12)], expected, rtol=1e-5, atol=1e-9)
    assert record["reached"] == pytest.approx(reached, rel=1e-6) and record["continues_to"] == 0
    assert record["instead_of"] == pytest.approx(cosine(6, 12), rel=1e-5)
    assert change_line(record, (4, 6)) == (f"epochs 4 -> 6: the LR continues from the {reached:.3g} reached at step 5 "
                                           f"and decays (cosine) to 0 at step 12, instead of going on at that "
                                           f"schedule's {cosine(6, 12):.3g} (run.json records it)")
    # An explicit change of the schedule's settings is what it says: that schedule from the resume step.
    changed = stored.replace(epochs=6, learning_rate=0.008)
    schedule, record = resumed_schedule(changed, BASE_LR / 2, STEPS, 5, info, stored)
    assert float(schedule(7)) == pytest.approx(cosine(8, 12) / 2, rel=1e-5)
    assert record["schedule_changed"] == ["learning_rate"]


def test_more_epochs_of_a_finished_cosine_run_say_its_lr_is_zero():
    from efficientnet_tf.training.resume_lr import resumed_schedule

    stored = _config("unused", epochs=4, lr_schedule="cosine", warmup_epochs=1)
    with pytest.raises(SettingError, match=r"reached 0 at step 8 .*Give them a learning rate: learning_rate=X "
                                           r"other than the run's 0.016 ") as raised:
        resumed_schedule(stored.replace(epochs=6), BASE_LR, STEPS, 8, {"base_lr": BASE_LR}, stored)
    assert raised.value.setting == "epochs"
