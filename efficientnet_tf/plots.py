"""Figures of a training run: history curves, LR schedule, progressive stages, confusion matrix,
augmented images, and for recognition embeddings the verification ROC and pair similarities.

Every function builds a `matplotlib.figure.Figure` directly (no pyplot, no display, no global
backend change, so it works on servers and leaves a notebook's backend alone), optionally saves
it as PNG, and returns it so callers and tests can read the plotted data back.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from efficientnet_tf.files import atomic_write
from efficientnet_tf.plots_history import load_history
from efficientnet_tf.training.rundir import (
    AUGMENTED_PNG,
    CONFUSION_PNG,
    HISTORY_PNG,
    LR_PNG,
    PROGRESSIVE_PNG,
    RunDir,
)
from efficientnet_tf.training.verification import roc_auc, tar_at_far

DPI = 100
MAX_CONFUSION_CLASSES = 50  # beyond this a class-by-class matrix is unreadable
ROC_PNG = "roc.png"  # plot_roc of a recognition run's held-out identities
SIMILARITY_PNG = "similarity.png"  # plot_similarity_histograms of the same pairs


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | None) -> Figure:
    if path:
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=DPI)
        atomic_write(path, png.getvalue())
    return figure


def _has(columns, key) -> bool:
    return key in columns and np.isfinite(columns[key]).any()


def _epoch_axis(axes) -> None:
    """Epochs are counted: a short run gets ticks 1, 2, 3, not 1.0, 1.5, 2.0."""
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_history(history, path: str | None = None, title: str | None = None) -> Figure:
    """Accuracy and loss, train and validation, against epoch (1-based, as the progress bar)."""
    columns = load_history(history)
    epochs = columns["epoch"] + 1
    figure = _new_figure(11, 4.2)
    for index, (metric, label) in enumerate((("accuracy", "accuracy"), ("loss", "loss"))):
        axes = figure.add_subplot(1, 2, index + 1)
        for key, name, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            if _has(columns, key):
                axes.plot(epochs, columns[key], style, markersize=3, label=name)
        _epoch_axis(axes)
        axes.set_ylabel(label)
        axes.set_title(f"{'Accuracy' if metric == 'accuracy' else 'Loss'}")
        if metric == "accuracy":
            axes.set_ylim(0, 1.02)
        else:
            values = np.concatenate([columns[k] for k in (metric, f"val_{metric}") if _has(columns, k)])
            values = values[np.isfinite(values) & (values > 0)]
            if len(values) and values.max() / values.min() > 30:  # one early spike would flatten the rest
                axes.set_yscale("log")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right" if metric == "accuracy" else "upper right")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_lr_schedule(schedule: Callable | None = None, total_steps: int | None = None,
                     steps_per_epoch: int = 1, history=None, path: str | None = None,
                     resumed_at: Sequence[int] = ()) -> Figure:
    """The LR per step from a schedule (e.g. `optim.WarmupSchedule`, or a resumed run's
    `training.resume_lr.RunSchedule`), with the value logged at the end of each epoch from a
    history on top, so the plan and what ran can be compared. `resumed_at`: the steps where a
    resume changed the schedule, marked."""
    figure = _new_figure(7, 4)
    axes = figure.add_subplot(1, 1, 1)
    if schedule is not None:
        if not total_steps:
            raise ValueError("plot_lr_schedule: total_steps is needed with a schedule")
        steps = np.arange(total_steps)
        values = np.array([float(schedule(step)) for step in steps])
        # Step s runs with the value at the end of the step, so it is drawn at (s + 1): the
        # logged end-of-epoch values then sit exactly on the curve.
        axes.plot((steps + 1) / steps_per_epoch, values, "-", label="schedule")
    for i, step in enumerate(resumed_at):
        axes.axvline(step / steps_per_epoch, color="0.5", linestyle=":",
                     label="resumed with another length or schedule" if i == 0 else None)
    if history is not None:
        columns = load_history(history)
        if _has(columns, "lr"):
            axes.plot(columns["epoch"] + 1, columns["lr"], "o", markersize=4, label="logged (end of epoch)")
    if schedule is None and history is None:
        raise ValueError("plot_lr_schedule needs a schedule or a history with an 'lr' column")
    _epoch_axis(axes)
    axes.set_ylabel("learning rate")
    axes.set_title("Learning-rate schedule")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _save(figure, path)


def plot_progressive(history=None, stages: Sequence | None = None, path: str | None = None) -> Figure:
    """Image size (left axis) and regularization (right axis) per epoch: what progressive
    learning actually trained with. Takes a history (per-epoch columns) or planned `Stage`s."""
    if stages is not None:
        epochs, size, dropout, randaug, mixup = [], [], [], [], []
        for stage in stages:
            for epoch in range(stage.first_epoch, stage.end_epoch):
                epochs.append(epoch)
                size.append(stage.image_size)
                dropout.append(stage.dropout_rate)
                randaug.append(stage.randaug_magnitude)
                mixup.append(stage.mixup_alpha)
        columns = {k: np.array(v, dtype=np.float64) for k, v in dict(
            epoch=epochs, image_size=size, dropout_rate=dropout, randaug_magnitude=randaug, mixup_alpha=mixup).items()}
    elif history is not None:
        columns = load_history(history)
    else:
        raise ValueError("plot_progressive needs a history or stages")
    if not _has(columns, "image_size"):
        raise ValueError("the history has no image_size column (it was not written by efficientnet_tf's trainer)")
    epochs = columns["epoch"] + 1
    figure = _new_figure(8, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    axes.step(epochs, columns["image_size"], where="mid", color="tab:blue", label="image size")
    _epoch_axis(axes)
    axes.set_ylabel("image size (px)")
    axes.grid(alpha=0.3)
    right = axes.twinx()
    for key, name, color in (("dropout_rate", "dropout", "tab:orange"),
                             ("randaug_magnitude", "RandAugment magnitude / 10", "tab:green"),
                             ("mixup_alpha", "mixup alpha", "tab:red")):
        if _has(columns, key):
            values = columns[key] / 10.0 if key == "randaug_magnitude" else columns[key]
            right.step(epochs, values, where="mid", color=color, linestyle="--", label=name)
    right.set_ylabel("regularization")
    lines = axes.get_lines() + right.get_lines()
    axes.legend(lines, [line.get_label() for line in lines], loc="upper left")
    axes.set_title("Progressive learning: image size and regularization per epoch")
    figure.tight_layout()
    return _save(figure, path)


def plot_confusion_matrix(matrix, class_names: Sequence[str] | None = None, path: str | None = None,
                          normalize: bool = True) -> Figure:
    """Rows: true class; columns: predicted. Normalized per row (recall on the diagonal), with
    counts written in the cells when there are few classes."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {matrix.shape}")
    n = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for a {n}x{n} confusion matrix")
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    side = min(4 + 0.45 * n, 20)
    figure = _new_figure(side + 1.5, side)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "count")
    axes.set_xticks(range(n))
    axes.set_yticks(range(n))
    axes.set_xticklabels(names, rotation=90 if n > 10 else 45, ha="right" if n <= 10 else "center")
    axes.set_yticklabels(names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    axes.set_title(f"Confusion matrix (top-1 {accuracy:.3f}, {int(matrix.sum())} images)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    axes.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=8,
                              color="white" if shown[i, j] > 0.5 else "black")
    figure.tight_layout()
    return _save(figure, path)


def plot_layer_errors(errors: Sequence[Mapping], kept_float: Sequence[str] = (), path: str | None = None,
                      title: str = "int8: each op's own quantization error, in network order",
                      kept_label: str = "kept in float by int8_selective") -> Figure:
    """Bars of `rmse_over_scale` per quantized op (the export report's `int8_layer_errors`),
    coloured by op type, x ticks at the first op of each block; ops whose output tensor is in
    `kept_float` (int8_selective's choice) are marked, with `kept_label` in the legend."""
    if not errors:
        raise ValueError("no quantized ops to plot")
    values = np.array([e["rmse_over_scale"] for e in errors], np.float64)
    ops = [e["op"] for e in errors]
    kinds = sorted(set(ops), key=lambda op: -max(v for o, v in zip(ops, values) if o == op))
    colours = {op: f"C{i % 10}" for i, op in enumerate(kinds)}
    figure = _new_figure(min(6 + 0.045 * len(errors), 22), 5)
    axes = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(errors))
    for op in kinds:
        chosen = [i for i, o in enumerate(ops) if o == op]
        axes.bar(positions[chosen], values[chosen], width=0.9, color=colours[op], label=op)
    kept = [i for i, e in enumerate(errors) if e["tensor"] in set(kept_float)]
    top = float(values.max()) * 1.2 if values.max() > 0 else 1.0
    if kept:
        axes.scatter(positions[kept], values[kept] + 0.04 * top, marker="v", s=14, color="black", zorder=3,
                     label=f"{kept_label} ({len(kept)})")
    axes.axhline(1 / np.sqrt(12), color="gray", linestyle="--", linewidth=1, label="rounding only (1/sqrt(12))")
    axes.set_ylim(0, top)
    axes.set_ylabel("RMSE / quantization step")
    # One tick per block (block2a, ...), at the block's first op: the network order a reader follows.
    ticks, names, previous = [], [], None
    for i, error in enumerate(errors):
        block = error["layer"].split("_")[0]
        if block != previous:
            ticks.append(i)
            names.append(block)
            previous = block
    axes.set_xticks(ticks)
    axes.set_xticklabels(names, rotation=90, fontsize=7)
    axes.set_xlim(-1, len(errors))
    axes.set_xlabel("op (network order; ticks at the first op of each block)")
    axes.set_title(f"{title} ({len(errors)} ops)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=7, borderaxespad=0)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def plot_image_grid(images, labels=None, class_names: Sequence[str] | None = None, path: str | None = None,
                    columns: int = 8, title: str = "Augmented training images (as fed to the model)") -> Figure:
    """A grid of images (0..255 floats, as the pipeline emits) titled by label. One-hot or mixed
    labels show the top class and its weight, so MixUp/CutMix are visible."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, H, W, 1|3), got {images.shape}")
    count = len(images)
    columns = max(1, min(columns, count))
    rows = int(np.ceil(count / columns))
    figure = _new_figure(1.6 * columns, 1.75 * rows + 0.5)
    for index in range(count):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(np.clip(images[index], 0, 255).astype(np.uint8).squeeze())
        axes.set_axis_off()
        if labels is not None:
            axes.set_title(_label_text(labels[index], class_names), fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def _label_text(label, class_names) -> str:
    label = np.asarray(label)
    if label.ndim == 0:
        index, weight = int(label), None
    else:
        index = int(np.argmax(label))
        weight = float(label[index])
    name = class_names[index] if class_names is not None and index < len(class_names) else str(index)
    return name if weight is None or weight > 0.95 else f"{name} ({weight:.2f})"


def plot_roc(curves: Mapping, path: str | None = None, title: str | None = None) -> Figure:
    """Verification ROC: TAR against FAR on a log axis from 1/N (N negative pairs: nothing lower
    is measurable) to 1, with TAR@FAR=1e-3 and 1e-2 marked and the AUC in the title. Takes the
    dict of `training.verification.verification_curves`."""
    positive, negative = curves["positive_scores"], curves["negative_scores"]
    figure = _new_figure(7, 5)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(curves["far"], curves["tar"], "-", color="tab:blue", label="ROC")
    lowest = 1.0 / len(negative)
    chance = np.logspace(np.log10(lowest), 0, 100)
    axes.plot(chance, chance, "--", color="gray", linewidth=1, label="chance (TAR = FAR)")
    for far, colour in ((1e-3, "tab:red"), (1e-2, "tab:orange")):
        if far >= lowest:  # below 1/N the point would sit off the axis
            value = tar_at_far(positive, negative, far)
            axes.plot([far], [value], "o", color=colour, label=f"TAR@FAR={far:g}: {value:.4f}")
    axes.set_xscale("log")
    axes.set_xlim(lowest, 1.0)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(f"false accept rate (FAR, {len(negative):,} negative pairs)")
    axes.set_ylabel(f"true accept rate (TAR, {len(positive):,} positive pairs)")
    auc = roc_auc(positive, negative)
    axes.set_title(f"{title + ': ' if title else ''}verification ROC (AUC {auc:.4f})")
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="lower right")
    figure.tight_layout()
    return _save(figure, path)


def plot_similarity_histograms(curves: Mapping, path: str | None = None, title: str | None = None) -> Figure:
    """Densities of the cosine similarity of positive (same identity) and negative pairs, on
    100 shared bins over the range the scores span (within [-1, 1]: embeddings bunched at 0.9997
    still get readable bars), with the best-accuracy threshold as a vertical line. Takes the dict
    of `training.verification.verification_curves`."""
    positive = np.asarray(curves["positive_scores"], np.float64)
    negative = np.asarray(curves["negative_scores"], np.float64)
    threshold = float(curves["best_threshold"])
    scores = np.concatenate([positive, negative, [min(max(threshold, -1.0), 1.0)]])
    pad = 0.02 * (scores.max() - scores.min()) + 1e-9
    bins = np.linspace(max(scores.min() - pad, -1.0), min(scores.max() + pad, 1.0), 101)
    figure = _new_figure(8, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    axes.hist(positive, bins=bins, density=True, alpha=0.55, color="tab:green",
              label=f"same identity ({len(positive):,} pairs)")
    axes.hist(negative, bins=bins, density=True, alpha=0.55, color="tab:red",
              label=f"different identities ({len(negative):,} pairs)")
    accuracy = ((positive >= threshold).sum() + (negative < threshold).sum()) / (len(positive) + len(negative))
    axes.axvline(threshold, color="black", linestyle="--", linewidth=1.2,
                 label=f"best threshold {threshold:.5g} (accuracy {accuracy:.4f})")
    axes.set_xlim(bins[0], bins[-1])
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    axes.set_title(f"{title + ': ' if title else ''}pair similarities")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    figure.tight_layout()
    return _save(figure, path)


def save_run_plots(model_dir: str, schedule: Callable | None = None, total_steps: int | None = None,
                   steps_per_epoch: int = 1, confusion: np.ndarray | None = None,
                   class_names: Sequence[str] | None = None, augmented: tuple | None = None,
                   curves: Mapping | None = None) -> list[str]:
    """Every plot a run can draw, as PNGs in model_dir; returns their paths. What is missing
    (e.g. no progressive stages, too many classes for a matrix) is skipped, not faked. The
    confusion matrix and an embedding run's verification `curves` are read from the run when
    not given."""
    run_dir = RunDir(model_dir)
    written = []
    columns = load_history(model_dir)
    try:
        run = run_dir.read_info()
    except FileNotFoundError:
        run = {}
    class_names = class_names or run.get("class_names")
    title = f"{run.get('model', '')} on {run.get('dataset', '')}".strip() if run else None

    def draw(plot, name, *args, **kwargs):
        plot(*args, path=run_dir.file(name), **kwargs)
        written.append(run_dir.file(name))

    draw(plot_history, HISTORY_PNG, columns, title=title or None)
    if schedule is not None or _has(columns, "lr"):
        resumed_at = [piece["from_step"] for piece in run.get("lr_schedule", [])[1:]]  # training.resume_lr
        draw(plot_lr_schedule, LR_PNG, schedule, total_steps, steps_per_epoch, history=columns, resumed_at=resumed_at)
    stage_ids = columns.get("stage", np.array([]))
    if _has(columns, "image_size") and len(np.unique(stage_ids[np.isfinite(stage_ids)])) > 1:
        draw(plot_progressive, PROGRESSIVE_PNG, columns)
    if confusion is None:
        confusion = run_dir.read_confusion()
    if confusion is not None and len(confusion) <= MAX_CONFUSION_CLASSES:
        draw(plot_confusion_matrix, CONFUSION_PNG, confusion, class_names)
    if curves is None:
        curves = run_dir.read_curves()
    if curves is not None:
        held_out = f"{run.get('model', '')}: held-out identities".lstrip(": ")
        draw(plot_roc, ROC_PNG, curves, title=held_out)
        draw(plot_similarity_histograms, SIMILARITY_PNG, curves, title=held_out)
    if augmented is not None:
        images, labels = augmented
        draw(plot_image_grid, AUGMENTED_PNG, images, labels, class_names)
    return written
