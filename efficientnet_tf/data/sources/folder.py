"""A folder of images: one sub-folder per class, or train/ and val/ each with one per class."""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf

from efficientnet_tf.advice import Arg, advised
from efficientnet_tf.data import image_io
from efficientnet_tf.data.config import ON_BAD_IMAGE
from efficientnet_tf.data.sources.base import Source
from efficientnet_tf.data.sources.file_check import check_image_files
from efficientnet_tf.data.sources.splits import (
    DEFAULT_VALIDATION_FRACTION,
    _held_out_count,
    _percent,
    _stratified_split,
)
from efficientnet_tf.settings import SettingError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Sub-folders of a folder dataset that hold the evaluation images next to train/, in order of
# preference (case does not matter).
FOLDER_EVAL_DIRS = ("val", "valid", "validation", "eval", "test")
# Files operating systems drop into photo folders; never images, never worth an error.
IGNORED_FILES = ("thumbs.db", "desktop.ini")


def _subdirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def _files_under(folder: str) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.startswith(".") and fname.lower() not in IGNORED_FILES:
                files.append(os.path.join(dirpath, fname))
    return files


def _split_layout(root: str) -> tuple[str | None, str | None]:
    """(train folder, eval folder) names when `root` is split into train/ and val/ (or valid/,
    validation/, eval/, test/), each holding class folders; (None, None) when the sub-folders of
    `root` are the classes themselves. A train/ folder without an eval folder gives (train, None)."""
    by_lower = {d.lower(): d for d in _subdirs(root)}
    train = by_lower.get("train")
    # A "train" folder of images (no class folders inside) is a class named train (locomotives).
    if train is None or not _subdirs(os.path.join(root, train)):
        return None, None
    evaluation = next((by_lower[n] for n in FOLDER_EVAL_DIRS
                       if n in by_lower and _subdirs(os.path.join(root, by_lower[n]))), None)
    unused = [d for d in by_lower.values() if d not in (train, evaluation)]
    if unused:
        log.warning("%s: using %s/%s; not using the folder(s) %s", root, train,
                    f" and {evaluation}/" if evaluation else "", ", ".join(f"{d}/" for d in unused))
    return train, evaluation


def folder_source(path: str, validation_fraction: float | None = None, seed: int = 0,
                  on_bad_image: str = "error", evaluate_all: bool = False) -> Source:
    """One sub-folder per class, or `train/` + `val/` (also valid/, validation/, eval/, test/)
    each with one sub-folder per class.

    Every file is checked once with the decoder training uses (in parallel; the verdicts are
    cached by path, size and modification time, see `check_image_files`): a file it cannot read
    (corrupt, TIFF, HEIC, not an image) is an error naming it, or with on_bad_image='skip' is
    left out and counted. A class folder with no usable image is not a class (warning); a class
    too small to appear in both splits is named in a warning with its count.

    Args:
        path: the folder (`~` expanded).
        validation_fraction: share of each class held out (seeded, stratified) for evaluation
            when there is no eval folder; None: 0.1.
        seed: picks the held-out images.
        on_bad_image: 'error' or 'skip'.
        evaluate_all: a folder that only evaluates a trained run: no share is held out, every
            image is in the eval split (and the train split); an eval folder still names its own.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise SettingError("on_bad_image", f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, "
                           f"got {on_bad_image!r}")
    fraction = DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
    root, train_dir, eval_dir, class_root, train_files, eval_files = _folder_layout(path)
    eval_root = os.path.join(root, eval_dir) if eval_dir else None

    train_files, eval_files = usable_image_files(root, on_bad_image, train_files, eval_files)

    empty = [c for c, files in train_files.items() if not files]
    if empty:
        log.warning("%s: class folder(s) with no usable image are not classes: %s", class_root, ", ".join(empty))
    classes = [c for c in sorted(train_files) if train_files[c]]
    orphaned = sorted(c for c, files in eval_files.items() if files and c not in classes)
    if orphaned:
        raise ValueError(f"{eval_root} has images of class(es) {orphaned} that {class_root} "
                         f"has no usable image of; every eval class must be a training class")
    if len(classes) < 2:
        raise ValueError(_too_few_classes(class_root, classes))
    label_of = {c: i for i, c in enumerate(classes)}

    if eval_dir:
        train = [(p, label_of[c]) for c in classes for p in train_files[c]]
        evaluation = [(p, label_of[c]) for c in classes for p in eval_files.get(c, [])]
        unseen = [c for c in classes if not eval_files.get(c)]
        if unseen:
            log.warning("%s: class(es) with no image in %s/, which evaluation therefore never measures: %s",
                        root, eval_dir, ", ".join(unseen))
        description = (f"train: folder {train_dir}/, {len(train):,} images; "
                       f"eval: folder {eval_dir}/, {len(evaluation):,} images")
    elif evaluate_all:
        train = evaluation = [(p, label_of[c]) for c in classes for p in train_files[c]]
        where = f"folder {train_dir}/" if train_dir else "the class folders"
        description = f"eval: every image of {where}, {len(evaluation):,} images (evaluated only)"
    else:
        everything = [(p, label_of[c]) for c in classes for p in train_files[c]]
        train, evaluation = _stratified_split(everything, fraction, seed)
        singletons = [f"{c} (1 image)" for c in classes if len(train_files[c]) == 1]
        if singletons:
            log.warning("%s: class(es) too small to appear in both training and evaluation, trained on but "
                        "never evaluated: %s", class_root, ", ".join(singletons))
        where = f"folder {train_dir}/" if train_dir else "the class folders"
        description = (f"train: {where} minus a stratified seeded {_percent(fraction)} (seed {seed}), "
                       f"{len(train):,} images; eval: the held-out {_percent(fraction)}, {len(evaluation):,} images")
    if not evaluation:
        raise ValueError(f"{eval_root} has no usable image of the training classes {classes}" if eval_root else
                         f"dataset folder {root!r} cannot be split: every class has a single usable image, "
                         f"so none is left for evaluation")
    splits = {"train": train, "eval": evaluation}

    def make(split, shuffle_files, seed_, shard):
        chosen = splits[split] if shard is None else splits[split][shard[1]::shard[0]]  # one file per example
        paths, labels = [p for p, _ in chosen], [label for _, label in chosen]
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), np.array(labels, np.int32)))
        if shuffle_files:
            ds = ds.shuffle(len(paths), seed=seed_, reshuffle_each_iteration=True)
        return ds.map(_decode_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed_ is not None)

    return Source(f"folder:{path}", len(classes), tuple(classes), len(train), len(evaluation),
                  native_size=None, flip_ok=True, _make=make, split_description=description)


def _folder_layout(path: str):
    """(root, train_dir, eval_dir, class_root, {class: files} to train on, {class: files} of the
    eval folder) from the listing alone; what no file check can change (no folder, a file, fewer
    than two class folders with files) is a FileNotFoundError or ValueError saying what was found."""
    root = os.path.expanduser(path)
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise FileNotFoundError(f"dataset folder {root!r} {what}: give a folder with one sub-folder of images "
                                "per class")
    train_dir, eval_dir = _split_layout(root)
    class_root = os.path.join(root, train_dir) if train_dir else root
    train_files = {cls: _files_under(os.path.join(class_root, cls)) for cls in _subdirs(class_root)}
    eval_root = os.path.join(root, eval_dir) if eval_dir else None
    eval_files = {cls: _files_under(os.path.join(eval_root, cls)) for cls in _subdirs(eval_root)} if eval_root else {}
    classes = [cls for cls, found in train_files.items() if found]
    if len(classes) < 2:
        raise ValueError(_too_few_classes(class_root, classes))
    return root, train_dir, eval_dir, class_root, train_files, eval_files


def _too_few_classes(class_root: str, classes: list[str]) -> str:
    found = (f"{len(classes)} class folder with images ({classes[0]})" if classes
             else "no sub-folder with images")
    loose = [name for name in os.listdir(class_root) if name.lower().endswith(IMAGE_EXTENSIONS)]
    if loose:
        found += f" and {len(loose)} image(s) directly in it: put them in one sub-folder per class"
    return (f"dataset folder {class_root!r} needs one sub-folder of images per class, at least 2 (e.g. cat/, "
            f"dog/); found {found}")


def folder_train_count(path: str, validation_fraction: float | None = None) -> int:
    """The training images `folder_source` will have, from the file listing alone (no file is
    checked: with on_bad_image='skip' the unreadable ones come off later); a folder that cannot be
    a dataset is the error training would give."""
    fraction = DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
    _, _, eval_dir, _, train_files, _ = _folder_layout(path)
    counts = [len(found) for found in train_files.values() if found]
    if eval_dir:
        return sum(counts)
    return sum(count - _held_out_count(count, fraction) for count in counts)


def usable_image_files(root: str, on_bad_image: str, *files_by_class: dict[str, list[str]]) -> list[dict]:
    """Each {class: files} without the files the training decoder cannot read: with
    on_bad_image='error' a ValueError naming them, with 'skip' a warning counting them."""
    verdicts = check_image_files([p for group in files_by_class for files in group.values() for p in files])
    bad = sorted((p, reason) for p, reason in verdicts.items() if reason is not None)
    if not bad:
        return list(files_by_class)
    listing = "\n  ".join(f"{p}: {reason}" for p, reason in bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
    if on_bad_image == "error":
        raise advised(ValueError, f"{len(bad)} file(s) in {root} cannot be read as {image_io.SUPPORTED_FORMATS} "
                      "images (pass ", Arg("on_bad_image", "skip"), f" to leave them out):\n  {listing}")
    log.warning("skipping %d unreadable file(s) in %s:\n  %s", len(bad), root, listing)
    bad_paths = {p for p, _ in bad}
    return [{c: [p for p in files if p not in bad_paths] for c, files in group.items()} for group in files_by_class]


def _decode_file(path, label):
    return image_io.read_image(path), label
