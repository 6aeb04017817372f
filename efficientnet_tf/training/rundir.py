"""The run directory: the one place that names and writes what a training run keeps.

    MODEL_DIR/
      run.json            what the run is: model, dataset, classes, sizes, the full config
      history.csv         one row per finished epoch (HISTORY_COLUMNS)
      checkpoints/        tf.train checkpoints, one per epoch (the newest `keep_checkpoints`)
      logs/               TensorBoard summaries
      eval_report.json    the final evaluation; confusion_matrix.npy beside it (classification)
                          or verification_curves.npz (the embedding task's ROC and pair scores)
      *.png               plots (see `efficientnet_tf.plots`)
      export/             SavedModel and TFLite files (deploy.export)

Every file is written atomically (`efficientnet_tf.files`): an interrupted run leaves the
previous version of each file, never half of one.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import zipfile

import numpy as np

from efficientnet_tf import files
from efficientnet_tf.files import atomic_write, move_aside
from efficientnet_tf.settings import SettingError
from efficientnet_tf.training.config import TrainConfig

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
HISTORY_CSV = "history.csv"
EVAL_REPORT_JSON = "eval_report.json"
CONFUSION_NPY = "confusion_matrix.npy"
CURVES_NPZ = "verification_curves.npz"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
EXPORT = "export"
HISTORY_PNG = "history.png"
LR_PNG = "lr_schedule.png"
PROGRESSIVE_PNG = "progressive.png"
CONFUSION_PNG = "confusion_matrix.png"
AUGMENTED_PNG = "augmented_images.png"
HISTORY_COLUMNS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss", "lr",
                   "stage", "image_size", "dropout_rate", "randaug_magnitude", "mixup_alpha", "images_per_sec")
# run.json "format": 2 stores the nested config; runs started before it (no "format") the flat one,
# whose names differ from today's flat names only here.
RUN_FORMAT = 2
_RENAMED_SETTINGS = {"progressive_stages": "progressive"}


# What a run's checkpoints mean. A rerun into the same model_dir must keep every one of these: a
# different model or data, image size, or steps per epoch (batch size) would mix two runs in one
# directory. How this process runs (hardware, logging, bookkeeping) may change freely; everything
# else (epochs to extend a run, the LR schedule, regularization) may change and is recorded in
# run.json's "resumes".
IDENTITY_SETTINGS = ("model", "dataset", "label_key", "validation_fraction", "seed", "image_size",
                     "train_image_size", "batch_size", "steps_per_epoch", "optimizer", "ema_decay", "mixed_precision",
                     "freeze_backbone", "finetune_epochs", "progressive", "progressive_min_size",
                     "progressive_max_size", "eval_dataset", "tfrecord_image_key", "tfrecord_label_key",
                     "tfrecord_label_offset", "class_names_file", "task", "loss", "embedding_dim", "embedding_head",
                     "held_out_identities")
RUNTIME_SETTINGS = ("model_dir", "data_dir", "keep_checkpoints", "steps_per_loop", "jit_compile", "strategy", "tpu",
                    "on_bad_image", "checkpoint_every_steps")


class NotARunError(FileNotFoundError):
    """The directory holds no run.json: nothing was trained there."""


class RunMismatch(ValueError):
    """A model_dir holds a run whose identity settings differ from the ones given."""

    def __init__(self, model_dir: str, differences: list[tuple[str, object, object]]):
        self.model_dir = model_dir
        self.differences = differences  # (setting, value in the run, value given)
        listed = "; ".join(f"{name} is {stored!r} there, {given!r} here" for name, stored, given in differences)
        super().__init__(f"{model_dir} holds a run with other settings: {listed}. Train into another model_dir, "
                         "or start over there with overwrite (the old run is kept, renamed)")


def setting_changes(stored: TrainConfig, given: TrainConfig, names, info: dict | None = None
                    ) -> list[tuple[str, object, object]]:
    """(name, stored value, given value) for each of `names` that differs. With the run's `info`,
    an unset size counts as the size it resolved to (an explicit `image_size=32` is the same run
    as the default that resolved to 32)."""
    old, new = stored.settings(), given.settings()
    for name in _KEPT_WHEN_UNSET:
        new[name] = old[name] if new[name] is None else new[name]
    for name in _RESOLVED_IN_INFO:
        if info and name in info:
            old[name] = info[name] if old[name] is None else old[name]
            new[name] = info[name] if new[name] is None else new[name]
    return [(name, old[name], new[name]) for name in names if old[name] != new[name]]


_RESOLVED_IN_INFO = ("image_size", "train_image_size")  # run.json records what these resolved to
# Unset on a resume, the run's own value (its config records what it resolved to; older runs, 64).
_KEPT_WHEN_UNSET = ("batch_size",)


def recorded_changes(stored: TrainConfig, given: TrainConfig) -> dict:
    """{name: [old, new]} of the settings a resume may change and run.json records."""
    names = [n for n in stored.settings() if n not in IDENTITY_SETTINGS and n not in RUNTIME_SETTINGS]
    return {name: [old, new] for name, old, new in setting_changes(stored, given, names)}


def check_same_classes(source, info: dict, run_dataset: str) -> None:
    """ValueError unless `source` has the classes the run in `info` was trained on, in the same
    order (label i must mean the same class to the model)."""
    names, run_names = list(source.class_names), list(info.get("class_names") or [])
    differs = source.num_classes != info["num_classes"] or (names and run_names and names != run_names)
    if differs:
        def shown(values):
            return ", ".join(map(str, values[:6])) + (", ..." if len(values) > 6 else "")

        raise ValueError(f"{source.name} has {source.num_classes} classes ({shown(names)}), the run was trained on "
                         f"{run_dataset}'s {info['num_classes']} ({shown(run_names)}): another dataset can be "
                         "evaluated only with the same classes in the same order")


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Paths in one run directory, and the reading and writing of its files."""

    path: str

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def checkpoints(self) -> str:
        return self.file(CHECKPOINTS)

    @property
    def logs(self) -> str:
        return self.file(LOGS)

    @property
    def export(self) -> str:
        return self.file(EXPORT)

    def worker_checkpoints(self, task_type: str, task_id: int) -> str:
        """Where a non-chief worker saves (it must, for the collectives) and later deletes."""
        return os.path.join(self.path, f".worker_{task_type}_{task_id}", CHECKPOINTS)

    # ------------------------------------------------------------------ run.json

    def exists(self) -> bool:
        """Whether a run was started here (its run.json exists)."""
        return files.exists(self.file(RUN_JSON))

    def check_same_run(self, config: TrainConfig) -> None:
        """`RunMismatch` when this directory holds a run that `config` would not continue."""
        stored, info = load_run(self.path)
        differences = setting_changes(stored, config, IDENTITY_SETTINGS, info)
        if differences:
            raise RunMismatch(self.path, differences)

    def check_can_hold_a_run(self, overwrite: bool = False) -> None:
        """SettingError (model_dir) unless this is a new or empty directory or a run's: training
        writes run.json, history.csv, checkpoints/ ... and must not write over anyone's files.
        With `overwrite` (the run is renamed aside) neither the current nor the home directory,
        nor a folder above them, may be the one renamed."""
        path = self.path
        if files.exists(path) and not files.isdir(path):
            raise SettingError("model_dir", f"{path} is a file, not a directory: give the directory a run is (or "
                               "will be) written to")
        protected = overwrite and not files.is_remote(path) and files.protected_folder(path)
        if protected:  # "/" holds the current directory too
            raise SettingError("model_dir", f"{path} is or holds {protected[0]}: overwrite renames the run directory "
                               "aside, so give the run its own folder")
        if self.exists() or not files.isdir(path):
            return
        foreign = sorted(name for name in files.listdir(path) if not name.startswith(".worker_"))
        if foreign:
            shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
            raise SettingError("model_dir", f"{path} holds files but no run ({shown}): nothing was written; give a "
                               "new or empty directory, or the directory of a run to continue")

    def set_aside(self) -> str | None:
        """Rename this directory to `<path>.replaced-N`; returns the new name, None when there was
        nothing to move."""
        return move_aside(self.path, "replaced") if files.exists(self.path) else None

    def write_info(self, info: dict) -> None:
        atomic_write(self.file(RUN_JSON), json.dumps(info, indent=2) + "\n")

    def read_info(self) -> dict:
        path = self.file(RUN_JSON)
        if not files.exists(path):
            raise NotARunError(f"{path} not found: {self.path} is not a training run directory (train first)")
        return json.loads(files.read_text(path))

    # ------------------------------------------------------------------ history.csv

    def read_history(self) -> list[dict]:
        path = self.file(HISTORY_CSV)
        return read_history_csv(path) if files.exists(path) else []

    def write_history(self, rows: list[dict]) -> None:
        # The task's own columns (the embedding task's verification figures) after the common ones.
        columns = list(HISTORY_COLUMNS) + [k for k in dict.fromkeys(k for row in rows for k in row)
                                           if k not in HISTORY_COLUMNS]
        lines = [",".join(columns)]
        lines += [",".join(str(row.get(column, "")) for column in columns) for row in rows]
        atomic_write(self.file(HISTORY_CSV), "\n".join(lines) + "\n")

    # ------------------------------------------------------------------ evaluation

    def write_eval_report(self, report: dict, confusion: np.ndarray | None = None, curves: dict | None = None) -> None:
        """The report, and what its plots are redrawn from: the confusion matrix, or the embedding
        task's verification curves (`training.verification.verification_curves`)."""
        atomic_write(self.file(EVAL_REPORT_JSON), json.dumps(report, indent=2) + "\n")
        if confusion is not None:
            _write_numpy(self.file(CONFUSION_NPY), np.save, confusion)
        if curves is not None:
            _write_numpy(self.file(CURVES_NPZ), np.savez, **curves)

    def read_confusion(self) -> np.ndarray | None:
        path = self.file(CONFUSION_NPY)
        return _read_numpy(path) if files.exists(path) else None

    def read_curves(self) -> dict | None:
        """The stored verification curves; None when there are none or they cannot be read (a
        warning: the plots they draw are left out, the run is not failed for them)."""
        path = self.file(CURVES_NPZ)
        if not files.exists(path):
            return None
        try:
            with _read_numpy(path) as stored:
                curves = {key: stored[key] for key in stored.files}
            curves["best_threshold"] = float(curves["best_threshold"])
            return curves
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            log.warning("%s unreadable (%s: %s): ROC and similarity plots left out", path, type(err).__name__, err)
            return None


def _write_numpy(path: str, save, *arrays, **named_arrays) -> None:
    """`save` (np.save or np.savez) into `path` atomically, through the file layer (gs:// too)."""
    buffer = io.BytesIO()
    save(buffer, *arrays, **named_arrays)
    atomic_write(path, buffer.getvalue())


def _read_numpy(path: str):
    """What `_write_numpy` wrote: an array (.npy) or an NpzFile (.npz), through the file layer."""
    return np.load(io.BytesIO(files.read_bytes(path)))


def read_history_csv(path: str) -> list[dict]:
    """The rows of a history.csv file (strings, as written)."""
    return list(csv.DictReader(io.StringIO(files.read_text(path))))


def read_history(model_dir: str) -> list[dict]:
    """The rows of a run's history.csv (strings, as written); [] before the first epoch."""
    return RunDir(model_dir).read_history()


def run_info(config: TrainConfig, **resolved) -> dict:
    """The run.json contents: `resolved` values (classes, sizes, steps) and the full config."""
    run = dataclasses.replace(config.run, model_dir=config.model_dir)
    return {"format": RUN_FORMAT, "model": config.model.name, "dataset": config.data.dataset, **resolved,
            "config": dataclasses.asdict(dataclasses.replace(config, run=run))}


def load_run(model_dir: str) -> tuple[TrainConfig, dict]:
    """The TrainConfig a run was started with (from its run.json) and the run info.

    Reads the nested config of this version and the flat one of runs started before it."""
    info = RunDir(model_dir).read_info()
    stored = info["config"]
    if info.get("format", 1) >= RUN_FORMAT:
        config = TrainConfig.from_dict(stored)
    else:
        known = set(TrainConfig().settings())
        flat = {_RENAMED_SETTINGS.get(k, k): v for k, v in stored.items()}
        config = TrainConfig.from_settings(**{k: v for k, v in flat.items() if k in known})
    return config.replace(model_dir=model_dir), info
