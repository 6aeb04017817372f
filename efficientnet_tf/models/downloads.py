"""The download cache of the weights: where Keras keeps downloads, and one download that fails
with the file, its URL and where to put it by hand."""

from __future__ import annotations

import os

import keras

from efficientnet_tf.advice import advised


def keras_models_dir(subdir: str = "") -> str:
    """Where Keras caches downloads (`$KERAS_HOME/models`, default ~/.keras/models), plus `subdir`."""
    keras_home = os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras"))
    return os.path.join(keras_home, "models", subdir) if subdir else os.path.join(keras_home, "models")


def download(fname: str, url: str, what: str, subdir: str = "", md5: str | None = None,
             offline_hint: tuple = ()) -> str:
    """`url` downloaded once into `keras_models_dir(subdir)/fname` (md5-checked when given); offline
    or on any failure, one OSError naming `what`, the file, its URL and where to put it, then
    `offline_hint` (`advice.advised` parts: another way out)."""
    directory = keras_models_dir(subdir)
    try:
        return keras.utils.get_file(fname, url, cache_dir=os.path.dirname(keras_models_dir()),
                                    cache_subdir=os.path.relpath(directory, os.path.dirname(keras_models_dir())),
                                    file_hash=md5)
    except Exception as err:  # offline, proxy, truncated download...
        raise advised(
            OSError, f"could not get {what}: {fname} from {url} ({type(err).__name__}: {err}). Without internet, "
            f"download that file elsewhere and put it at {os.path.join(directory, fname)}", *offline_hint
        ) from err
