"""The file check: can training decode each image file, with the verdicts cached under `cache_dir()`."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os

import tensorflow as tf

from efficientnet_tf.data import image_io
from efficientnet_tf.files import write_cache

log = logging.getLogger(__name__)

CACHE_ENV = "EFFICIENTNET_TF_CACHE"


def cache_dir() -> str:
    """Where efficientnet_tf keeps what it can recompute: $EFFICIENTNET_TF_CACHE or ~/.cache/efficientnet_tf."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "efficientnet_tf"))


def _verdict_file(paths: list[str]) -> str:
    # One file per folder (the common parent of its images): a cache for one dataset stays as
    # small as that dataset, and is rewritten without the others' entries.
    common = os.path.commonpath(paths) if paths else ""
    return os.path.join(cache_dir(), "image_checks", hashlib.sha256(common.encode()).hexdigest()[:24] + ".json")


def _load_verdicts(cache_path: str) -> dict:
    try:
        with open(cache_path, encoding="utf8") as f:
            stored = json.load(f)
        if stored.get("decoder") != image_io.DECODER_VERSION or stored.get("tensorflow") != tf.__version__:
            return {}
        return {path: tuple(entry) for path, entry in stored["verdicts"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # damaged: check again
        log.info("ignoring the unreadable image-check cache %s (%s)", cache_path, type(err).__name__)
        return {}


def _save_verdicts(cache_path: str, verdicts: dict) -> None:
    payload = {"decoder": image_io.DECODER_VERSION, "tensorflow": tf.__version__,
               "verdicts": {path: list(entry) for path, entry in verdicts.items()}}
    try:
        if not write_cache(cache_path, json.dumps(payload), lambda text: '"verdicts"' in text):
            log.info("image-check cache not written: %s is not one (left as it is)", cache_path)
    except OSError as err:  # a read-only home must not stop training
        log.info("image-check cache not written to %s (%s)", cache_path, err)


def check_image_files(paths: list[str], workers: int | None = None) -> dict[str, str | None]:
    """{path: None if training can decode it, else the reason}, for every path.

    Decodes with `image_io.decode_image` (the decoder training uses) in a thread pool, once per
    file: verdicts are cached by (absolute path, size, mtime_ns) under `cache_dir()`, so an
    unchanged folder is not decoded again; a touched or replaced file is.
    """
    if not paths:
        return {}
    absolute = {p: os.path.abspath(p) for p in paths}
    cache_path = _verdict_file(sorted(set(absolute.values())))
    cached = _load_verdicts(cache_path)
    verdicts, stamps, todo = {}, {}, []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as err:
            verdicts[path] = f"cannot open: {err.strerror or err}"
            continue
        stamps[path] = (stat.st_size, stat.st_mtime_ns)
        entry = cached.get(absolute[path])
        if entry is not None and tuple(entry[:2]) == stamps[path]:
            verdicts[path] = entry[2]
        else:
            todo.append(path)
    if todo:
        if len(todo) > 1000:
            log.info("checking %d image files (%d unchanged since the last check)", len(todo), len(paths) - len(todo))
        workers = workers or min(32, 2 * (os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for path, reason in zip(todo, pool.map(image_io.check_image_file, todo)):
                verdicts[path] = reason
    if todo or len(cached) != len(stamps):
        _save_verdicts(cache_path, {absolute[p]: (*stamps[p], verdicts[p]) for p in stamps})
    return verdicts
