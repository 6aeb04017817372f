"""Restoring a run's newest checkpoint that can be read, whatever happened to the newer ones.

A checkpoint can be damaged in many ways (a crash mid-write, a full disk, a copy cut short): a
missing or zero-length data file, a truncated index, garbage. Each is told apart from a checkpoint
that reads fine but belongs to another model (which is the caller's mistake, not damage): only
unreadable files are passed over. Damaged files are never deleted: they are renamed
`*.damaged-N` beside the good ones, with a warning naming them, and the directory's `checkpoint`
state file is rewritten to list only readable checkpoints (so the next save does not reuse a name).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re

import tensorflow as tf

from efficientnet_tf import files
from efficientnet_tf.files import atomic_write, move_aside
from efficientnet_tf.training.errors import UnreadableCheckpoints

log = logging.getLogger(__name__)


_CHECKPOINT_FILE = re.compile(r"^(.+-\d+)\.(?:index|data-\d+-of-\d+)$")
STATE_FILE = "checkpoint"  # CheckpointManager's list of checkpoints, in the directory


def checkpoint_paths(directory: str) -> list[str]:
    """The checkpoints in `directory` (prefixes such as DIR/ckpt-3), oldest first: every one with
    an index or a data file present. The files are the truth: a state file may be damaged, stale,
    or point into another directory (a run that was moved)."""
    if not files.isdir(directory):
        return []
    prefixes = {match.group(1) for name in files.listdir(directory) if (match := _CHECKPOINT_FILE.match(name))}
    return [os.path.join(directory, p) for p in sorted(prefixes, key=lambda p: int(p.rsplit("-", 1)[1]))]


def write_state_file(directory: str, paths: list[str]) -> None:
    """Rewrite the state file to list `paths` (oldest first) the way CheckpointManager writes it:
    names relative to the directory (a moved run still reads its own) and each checkpoint's time,
    so that the manager keeps pruning them (`keep_checkpoints`)."""
    names = [os.path.basename(p) for p in paths]
    times = [files.modified_time(f"{p}.index") if files.exists(f"{p}.index") else 0.0 for p in paths]
    # CheckpointState in protobuf text format, as TF writes it (names are plain: ckpt-N).
    lines = [f"model_checkpoint_path: {json.dumps(names[-1])}"]
    lines += [f"all_model_checkpoint_paths: {json.dumps(name)}" for name in names]
    lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in times]
    lines.append(f"last_preserved_timestamp: {min(times) - 1.0!r}")
    atomic_write(os.path.join(directory, STATE_FILE), "\n".join(lines) + "\n")


def repair_state_file(directory: str) -> None:
    """Before a CheckpointManager reads `directory`: an unreadable state file is kept as
    `checkpoint.damaged-N` (with a warning) and rewritten from the checkpoint files present."""
    path = os.path.join(directory, STATE_FILE)
    if not files.exists(path):
        return
    try:
        tf.train.get_checkpoint_state(directory)
        return
    except (tf.errors.OpError, ValueError, UnicodeDecodeError) as err:  # text_format.ParseError is a ValueError
        reason = type(err).__name__
    moved = move_aside(path, "damaged")
    log.warning("checkpoint state file %s is unreadable (%s): kept as %s, rewritten from the checkpoints present",
                path, reason, os.path.basename(moved))
    paths = checkpoint_paths(directory)
    if paths:
        write_state_file(directory, paths)


def unreadable_reason(path: str) -> str | None:
    """None when every tensor of checkpoint `path` reads back; else why not, in a few words."""
    try:
        # The reader itself: load_checkpoint first asks whether `path` is a directory, which some
        # file systems answer yes for any prefix.
        reader = tf.compat.v1.train.NewCheckpointReader(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as err:  # noqa: BLE001  (TF raises many types for damaged files: OpError, IndexError, ...)
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}".rstrip(": ")
    return None


# The files one checkpoint prefix (DIR/ckpt-3) is written as: its index and its data shards.
_CHECKPOINT_SUFFIX = re.compile(r"\.(index|data-\d{5}-of-\d{5})")


def checkpoint_files(path: str) -> list[str]:
    """The files TensorFlow wrote for checkpoint `path`, and nothing else that shares its name."""
    return [file for file in files.glob_files(glob.escape(path) + ".*")
            if _CHECKPOINT_SUFFIX.fullmatch(file[len(path):])]


def set_aside(path: str) -> list[str]:
    """Rename every file of checkpoint `path` to `<file>.damaged-N`; returns the new names."""
    return [move_aside(file, "damaged") for file in checkpoint_files(path)]


def remove_checkpoints(directory: str) -> None:
    """Delete the checkpoints a worker wrote in `directory` (its state file and checkpoint files),
    then the directory and its parent if nothing else is left there: a file anyone else put
    there stays, and so do the folders holding it."""
    if not files.isdir(directory):
        return
    for name in files.listdir(directory):
        path = os.path.join(directory, name)
        prefix, dot, suffix = name.partition(".")
        if name == STATE_FILE or re.fullmatch(r"ckpt-\d+", prefix) and _CHECKPOINT_SUFFIX.fullmatch(dot + suffix):
            files.remove_file(path)
    for folder in (directory, os.path.dirname(directory)):
        if files.isdir(folder) and not files.listdir(folder):
            files.remove_empty_directory(folder)


def restore_newest_readable(checkpoint: tf.train.Checkpoint, directory: str, *, partial: bool = False,
                            repair: bool = True) -> tuple[str | None, list[str]]:
    """Restore `checkpoint` from the newest readable checkpoint in `directory`.

    Args:
        checkpoint: what to restore into.
        directory: a CheckpointManager's directory.
        partial: the checkpoint may hold objects `checkpoint` does not (e.g. the optimizer, when
            only the model is restored for export).
        repair: set damaged checkpoints aside and rewrite the state file (False on workers that
            only read another worker's directory).

    Returns:
        (the path restored or None when there is no checkpoint, the damaged paths passed over).

    Raises:
        UnreadableCheckpoints: checkpoints exist but none reads.
        ValueError: a readable checkpoint that does not match `checkpoint` (another model).
    """
    candidates = checkpoint_paths(directory)
    damaged = []
    for path in reversed(candidates):
        reason = unreadable_reason(path)
        if reason is not None:
            log.warning("checkpoint %s is damaged (%s); trying an older one", path, reason)
            damaged.append(path)
            continue
        try:
            status = checkpoint.restore(path)
            if partial:
                status.expect_partial()
            status.assert_existing_objects_matched()
        except (ValueError, AssertionError) as err:  # another model: shapes or objects differ
            raise ValueError(f"checkpoint {path} is readable but does not match this model: "
                             f"{str(err).splitlines()[0][:300]}") from None
        if damaged and repair:
            _repair(directory, damaged, [p for p in candidates if p not in damaged])
        return path, damaged
    if damaged:
        raise UnreadableCheckpoints(f"every checkpoint in {directory} is damaged ({len(damaged)}: "
                                    f"{', '.join(os.path.basename(p) for p in damaged)}); the files are kept "
                                    "there for inspection; move that directory away to start afresh")
    return None, damaged


def _repair(directory: str, damaged: list[str], good: list[str]) -> None:
    for path in damaged:
        moved = set_aside(path)
        log.warning("damaged checkpoint %s kept as %s", path, ", ".join(os.path.basename(m) for m in moved))
    write_state_file(directory, good)
