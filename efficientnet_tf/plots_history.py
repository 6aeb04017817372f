"""The history the plots draw: a run's history as float columns, from any of the forms a user has
at hand (a Keras `History`, a dict of lists, a list of row dicts, a `history.csv` path or a
model_dir)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from efficientnet_tf import files
from efficientnet_tf.training.rundir import HISTORY_CSV, read_history_csv


def load_history(history) -> dict[str, np.ndarray]:
    """Columns of a run's history as float arrays, from any of the forms a user has at hand:
    a Keras `History`, a dict of lists, a list of row dicts, a `history.csv` path or a model_dir."""
    if hasattr(history, "history") and isinstance(history.history, Mapping):  # keras.callbacks.History
        columns = {k: list(v) for k, v in history.history.items()}
        columns.setdefault("epoch", list(getattr(history, "epoch", range(len(next(iter(columns.values()), []))))))
    elif isinstance(history, Mapping):
        columns = {k: list(v) for k, v in history.items()}
    elif isinstance(history, (str, os.PathLike)):
        path = os.fspath(history)
        csv_path = os.path.join(path, HISTORY_CSV) if files.isdir(path) else path
        if not files.exists(csv_path):
            raise FileNotFoundError(f"no history at {csv_path}: train first, or pass a history.csv")
        columns = _rows_to_columns(read_history_csv(csv_path))
    elif isinstance(history, Sequence):
        columns = _rows_to_columns(history)
    else:
        raise TypeError(f"cannot read a history from {type(history).__name__}; pass a keras History, "
                        "a dict of lists, a list of rows, a history.csv path or a model_dir")
    if not columns or not any(len(v) for v in columns.values()):
        raise ValueError("the history is empty: no epoch has finished yet")
    length = max(len(v) for v in columns.values())
    columns.setdefault("epoch", list(range(length)))
    return {k: np.array([_to_float(x) for x in v], dtype=np.float64) for k, v in columns.items()}


def _rows_to_columns(rows) -> dict[str, list]:
    columns: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    return columns


def _to_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
