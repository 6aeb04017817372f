import csv
import struct

import keras
import numpy as np
import pytest

from efficientnet_tf import plots
from efficientnet_tf.training.optim import WarmupSchedule
from efficientnet_tf.training import HISTORY_COLUMNS, Stage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def write_history(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in HISTORY_COLUMNS})


ROWS = [dict(epoch=i, accuracy=0.5 + 0.1 * i, loss=2.0 - 0.3 * i, val_accuracy=0.45 + 0.1 * i, val_loss=2.1 - 0.3 * i,
             lr=0.01 * (i + 1), stage=i // 2, image_size=[16, 16, 24, 24][i], dropout_rate=[0.1, 0.1, 0.2, 0.2][i],
             randaug_magnitude=[5, 5, 10, 10][i], mixup_alpha=0.0) for i in range(4)]


def test_history_from_csv_plots_the_csv_data(tmp_path):
    write_history(tmp_path / "history.csv", ROWS)
    out = tmp_path / "h.png"
    figure = plots.plot_history(str(tmp_path / "history.csv"), str(out))
    assert png_size(out) == (1100, 420)  # 11x4.2 inches at 100 dpi
    accuracy_axes, loss_axes = figure.axes
    train, val = accuracy_axes.get_lines()
    assert train.get_label() == "train" and val.get_label() == "validation"
    np.testing.assert_allclose(train.get_xdata(), [1, 2, 3, 4])  # epochs shown 1-based
    np.testing.assert_allclose(train.get_ydata(), [r["accuracy"] for r in ROWS])
    np.testing.assert_allclose(val.get_ydata(), [r["val_accuracy"] for r in ROWS])
    np.testing.assert_allclose(loss_axes.get_lines()[1].get_ydata(), [r["val_loss"] for r in ROWS])
    assert accuracy_axes.get_xlabel() == "epoch" and loss_axes.get_ylabel() == "loss"


def test_history_from_keras_history_and_model_dir(tmp_path):
    history = keras.callbacks.History()
    history.history = {"accuracy": [0.2, 0.6, 0.9], "loss": [2.0, 1.0, 0.4], "val_accuracy": [0.1, 0.5, 0.8],
                       "val_loss": [2.2, 1.2, 0.5]}
    history.epoch = [0, 1, 2]
    figure = plots.plot_history(history)
    np.testing.assert_allclose(figure.axes[0].get_lines()[1].get_ydata(), [0.1, 0.5, 0.8])
    for axes in figure.axes:  # three epochs: whole-epoch ticks, not matplotlib's default 1.00, 1.25, ...
        ticks = [t for t in axes.get_xticks() if 1 <= t <= 3]
        assert ticks == [1, 2, 3], axes.get_xticks()
    write_history(tmp_path / "history.csv", ROWS)
    assert len(plots.plot_history(str(tmp_path)).axes[0].get_lines()[0].get_ydata()) == 4


def test_history_without_validation_draws_train_only():
    figure = plots.plot_history({"accuracy": [0.3, 0.4], "loss": [1.0, 0.9], "val_accuracy": [float("nan")] * 2})
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["train"]


def test_bad_history_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no history at"):
        plots.plot_history(str(tmp_path))
    with pytest.raises(ValueError, match="empty"):
        plots.plot_history({"accuracy": []})
    with pytest.raises(TypeError, match="cannot read a history from int"):
        plots.plot_history(3)


def test_lr_schedule_plots_the_schedule_and_logged_values(tmp_path):
    schedule = WarmupSchedule(0.1, steps_per_epoch=10, total_steps=100, schedule="cosine", warmup_epochs=2)
    out = tmp_path / "lr.png"
    figure = plots.plot_lr_schedule(schedule, total_steps=100, steps_per_epoch=10, history=ROWS, path=str(out))
    planned, logged = figure.axes[0].get_lines()
    assert len(planned.get_ydata()) == 100
    # Step s runs with the value at its end: drawn at (s + 1) steps, in epochs.
    np.testing.assert_allclose(planned.get_xdata()[:3], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(planned.get_ydata()[[0, 19, 60]], [float(schedule(s)) for s in (0, 19, 60)], rtol=1e-6)
    assert planned.get_ydata().max() == pytest.approx(0.1)
    np.testing.assert_allclose(logged.get_xdata(), [r["epoch"] + 1 for r in ROWS])
    np.testing.assert_allclose(logged.get_ydata(), [r["lr"] for r in ROWS])
    # An epoch's last step (the value the trainer logs) sits at the end of that epoch on the curve.
    x_of_last_step = planned.get_xdata()[[10 * (epoch + 1) - 1 for epoch in range(4)]]
    np.testing.assert_allclose(x_of_last_step, [1, 2, 3, 4])
    assert png_size(out) == (700, 400)


def test_progressive_plot_from_stages_and_history():
    stages = [Stage(0, 0, 2, 128, 0.1, 5.0, 0.0), Stage(1, 2, 4, 192, 0.2, 10.0, 0.1), Stage(2, 4, 5, 256, 0.3, 15.0, 0.2)]
    figure = plots.plot_progressive(stages=stages)
    size_axes, regularization_axes = figure.axes
    np.testing.assert_allclose(size_axes.get_lines()[0].get_ydata(), [128, 128, 192, 192, 256])
    lines = {line.get_label(): line.get_ydata() for line in regularization_axes.get_lines()}
    np.testing.assert_allclose(lines["dropout"], [0.1, 0.1, 0.2, 0.2, 0.3])
    np.testing.assert_allclose(lines["RandAugment magnitude / 10"], [0.5, 0.5, 1.0, 1.0, 1.5])
    np.testing.assert_allclose(lines["mixup alpha"], [0, 0, 0.1, 0.1, 0.2])
    assert all(float(t).is_integer() for t in size_axes.get_xticks())
    from_history = plots.plot_progressive(history=ROWS)
    np.testing.assert_allclose(from_history.axes[0].get_lines()[0].get_ydata(), [16, 16, 24, 24])


def test_confusion_matrix_shows_row_normalized_counts(tmp_path):
    matrix = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 10]])
    out = tmp_path / "cm.png"
    figure = plots.plot_confusion_matrix(matrix, ["cat", "dog", "fox"], str(out))
    axes = figure.axes[0]
    np.testing.assert_allclose(axes.get_images()[0].get_array(), matrix / 10.0)
    assert [t.get_text() for t in axes.get_yticklabels()] == ["cat", "dog", "fox"]
    assert sorted(t.get_text() for t in axes.texts) == sorted(str(v) for v in matrix.ravel() if v)
    assert "0.900" in axes.get_title()  # 27 of 30 on the diagonal
    png_size(out)
    with pytest.raises(ValueError, match="square"):
        plots.plot_confusion_matrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2 class names for a 3x3"):
        plots.plot_confusion_matrix(matrix, ["a", "b"])


def test_image_grid_shows_the_images_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (5, 16, 16, 3)).astype(np.float32)
    labels = np.eye(3)[[0, 1, 2, 0, 1]]
    labels[4] = [0.3, 0.7, 0.0]  # a mixed label shows its weight
    figure = plots.plot_image_grid(images, labels, ["a", "b", "c"], str(tmp_path / "g.png"), columns=3)
    assert len(figure.axes) == 5
    np.testing.assert_array_equal(figure.axes[2].get_images()[0].get_array(), images[2].astype(np.uint8))
    assert [a.get_title() for a in figure.axes] == ["a", "b", "c", "a", "b (0.70)"]
    with pytest.raises(ValueError, match="expected images of shape"):
        plots.plot_image_grid(np.zeros((4, 4)))
