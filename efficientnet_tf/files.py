"""Writing files so that a reader, a crash or a full disk never leaves half of one.

The one implementation of atomic writes (and of moving things aside) in the package: run
directories, checkpoints, plots, exports and caches all go through it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable


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


def move_aside(path: str | os.PathLike, suffix: str) -> str:
    """Rename `path` (a file or directory) to `<path>.<suffix>-N`, N the first free number, so that
    nothing is overwritten or deleted; returns the new name."""
    path = os.fspath(path)
    n = 1
    while os.path.exists(f"{path}.{suffix}-{n}"):
        n += 1
    os.replace(path, f"{path}.{suffix}-{n}")
    return f"{path}.{suffix}-{n}"


def replace_directory(build: Callable[[str], None], destination: str | os.PathLike) -> str:
    """Run `build(staging_dir)` next to `destination`, then swap the result in.

    On any failure the previous destination (if any) is untouched and the staging directory
    removed. Returns the absolute destination.
    """
    destination = os.path.abspath(os.fspath(destination))
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(destination)}.tmp-", dir=parent)
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; an export is meant to be shared
    retired = None
    if os.path.exists(destination):
        retired = tempfile.mkdtemp(prefix=f".{os.path.basename(destination)}.old-", dir=parent)
        os.rmdir(retired)
        os.replace(destination, retired)
    os.replace(staging, destination)
    if retired:
        shutil.rmtree(retired, ignore_errors=True)
    return destination
