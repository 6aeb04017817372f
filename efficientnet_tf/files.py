"""Writing files so that a reader, a crash or a full disk never leaves half of one.

The one implementation of atomic writes (and of moving things aside) in the package: run
directories, checkpoints, plots, exports and caches all go through it. Paths with a scheme
(`gs://bucket/run`, TensorFlow's `ram://`) go through TensorFlow's file system layer
(`tf.io.gfile`): a run directory can live in a bucket, as TPU training needs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable


def is_remote(path: str | os.PathLike) -> bool:
    """A path TensorFlow's file system layer serves (gs://, ram://, ...), not the local disk."""
    return "://" in os.fspath(path)


def _gfile():
    import tensorflow as tf  # only for remote paths: this module stays importable without it

    return tf.io.gfile


def exists(path: str | os.PathLike) -> bool:
    return _gfile().exists(os.fspath(path)) if is_remote(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
    return _gfile().isdir(os.fspath(path)) if is_remote(path) else os.path.isdir(path)


def listdir(path: str | os.PathLike) -> list[str]:
    """Entry names (directories without a trailing slash)."""
    if is_remote(path):
        return [name.rstrip("/") for name in _gfile().listdir(os.fspath(path))]
    return os.listdir(path)


def makedirs(path: str | os.PathLike) -> None:
    if is_remote(path):
        _gfile().makedirs(os.fspath(path))
    else:
        os.makedirs(path, exist_ok=True)


def protected_folder(path: str | os.PathLike) -> tuple[str, bool] | None:
    """(name, whether `path` is it) when the local `path` is or holds the current or the home
    directory, which no operation may replace or rename; None otherwise."""
    real = os.path.realpath(os.fspath(path))
    for folder, name in ((os.getcwd(), "the current directory"), (os.path.expanduser("~"), "the home directory")):
        folder = os.path.realpath(folder)
        if folder == real or folder.startswith(real.rstrip(os.sep) + os.sep):
            return name, folder == real
    return None


def remove_file(path: str | os.PathLike) -> None:
    """Delete one file the caller wrote; a missing one is not an error."""
    if is_remote(path):
        if _gfile().exists(os.fspath(path)):
            _gfile().remove(os.fspath(path))
    elif os.path.lexists(path):
        os.unlink(path)


def remove_empty_directory(path: str | os.PathLike) -> None:
    """Delete a directory that holds nothing (anything in it: OSError, nothing deleted)."""
    if is_remote(path):
        if _gfile().listdir(os.fspath(path)):  # object stores have no rmdir: refuse as it would
            raise OSError(f"{path} is not empty")
        _gfile().rmtree(os.fspath(path))
    else:
        os.rmdir(path)


def modified_time(path: str | os.PathLike) -> float:
    """Seconds since the epoch (0.0 where the file system keeps no times)."""
    if is_remote(path):
        return _gfile().stat(os.fspath(path)).mtime_nsec / 1e9
    return os.path.getmtime(path)


def read_text(path: str | os.PathLike) -> str:
    if is_remote(path):
        with _gfile().GFile(os.fspath(path), "r") as f:
            return f.read()
    with open(path, encoding="utf8", newline="") as f:
        return f.read()


def read_bytes(path: str | os.PathLike) -> bytes:
    if is_remote(path):
        with _gfile().GFile(os.fspath(path), "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def glob_files(pattern: str) -> list[str]:
    """Paths matching `pattern` (its literal part must not hold glob characters)."""
    return sorted(_gfile().glob(pattern)) if is_remote(pattern) else sorted(glob.glob(pattern))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: str | bytes) -> str:
    """Write `data` to a temporary file beside `path`, then rename it over `path`.

    A reader sees the old file or the new one, never half of either; on failure the old file
    is untouched and the temporary one removed. Permissions follow the umask like a plain
    open() (mkstemp's own are private). Returns the path written.
    """
    path = os.fspath(path)
    if is_remote(path):
        # Written whole under another name, then renamed over `path` (on gs:// a copy, which
        # replaces the object at once); writing `path` itself would append on some file systems.
        gfile = _gfile()
        gfile.makedirs(os.path.dirname(path))
        temporary = os.path.join(os.path.dirname(path), f".tmp_{uuid.uuid4().hex}")
        try:
            with gfile.GFile(temporary, "wb" if isinstance(data, bytes) else "w") as f:
                f.write(data)
            gfile.rename(temporary, path, overwrite=True)
        except BaseException:
            if gfile.exists(temporary):
                gfile.remove(temporary)
            raise
        return path
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp_")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w", **({} if isinstance(data, bytes) else
                                                                         {"encoding": "utf8"})) as f:
            f.write(data)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def write_cache(path: str | os.PathLike, data: str, recognise: Callable[[str], bool]) -> bool:
    """`atomic_write` a cache file, unless a file at `path` is not one this cache wrote
    (`recognise(its text)` is False): a file someone else put there is left as it is and nothing
    is cached. Returns whether it was written."""
    if exists(path):
        try:
            ours = recognise(read_text(path))
        except (OSError, ValueError, UnicodeDecodeError):
            ours = False
        if not ours:
            return False
    atomic_write(path, data)
    return True


def move_into_place(source: str | os.PathLike, path: str | os.PathLike) -> str:
    """Rename a finished local file or directory (written beside `path`, e.g. by a library that
    only writes to a path) to `path` in one step: readers see the old one or the new one. The
    caller has made sure that whatever is at `path` is its own to replace."""
    os.replace(os.fspath(source), os.fspath(path))
    return os.fspath(path)


def move_aside(path: str | os.PathLike, suffix: str) -> str:
    """Rename `path` (a file or directory) to `<path>.<suffix>-N`, N the first free number, so that
    nothing is overwritten or deleted; returns the new name."""
    path = os.fspath(path)
    n = 1
    while exists(f"{path}.{suffix}-{n}"):
        n += 1
    if is_remote(path):
        _gfile().rename(path, f"{path}.{suffix}-{n}")
    else:
        os.replace(path, f"{path}.{suffix}-{n}")
    return f"{path}.{suffix}-{n}"


def replace_directory(build: Callable[[str], None], destination: str | os.PathLike) -> tuple[str, str | None]:
    """Run `build(staging_dir)` next to `destination`, then move the result in.

    On any failure `destination` is untouched and the staging directory removed. A destination
    that holds anything is renamed `<destination>.replaced-N` first, never deleted (this
    function cannot know who wrote it). Returns the absolute destination and the set-aside
    name (None when there was nothing to set aside).
    """
    if is_remote(destination):
        raise ValueError(f"an export is built in a local directory and moved in there, not in {destination}: "
                         "give a local export directory (and copy it to the bucket afterwards)")
    destination = os.path.abspath(os.fspath(destination))
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(destination)}.tmp-", dir=parent)
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # made by mkdtemp above: ours alone
        raise
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; an export is meant to be shared
    moved = None
    with interrupts_deferred():
        if os.path.isdir(destination) and not os.path.islink(destination) and not os.listdir(destination):
            os.rmdir(destination)  # empty: nothing of anyone's is lost, and the rename needs the name free
        elif os.path.lexists(destination):
            moved = move_aside(destination, "replaced")
        os.replace(staging, destination)
    return destination, moved


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C and SIGTERM wait until the block has ended (a few renames that must not stop half
    way), then arrive as usual. Outside the main thread signals cannot be caught: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {number: signal.signal(number, lambda n, frame: received.append(n))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            os.kill(os.getpid(), received[0])
