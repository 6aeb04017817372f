import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The folder file-check cache goes to a throwaway directory, never the user's ~/.cache.
_THROWAWAY_CACHE = None
if "EFFICIENTNET_TF_CACHE" not in os.environ:
    import tempfile

    _THROWAWAY_CACHE = tempfile.mkdtemp(prefix="efficientnet_tf_cache_")
    os.environ["EFFICIENTNET_TF_CACHE"] = _THROWAWAY_CACHE

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so distribution tests can run a 2-replica strategy on this machine.
# Must happen before TensorFlow initialises its devices, hence here at import time.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running (every variant, real training runs)")
    # With -n 2, hand tests out two at a time. By default xdist gives each worker a block of a
    # quarter of its share at the start (81 tests): the slow tests, sorted first below, all went to
    # one worker, which ran alone for minutes after the other had finished. Set here, not in
    # pytest.ini, so that a run without xdist does not stop at an unknown option.
    if config.pluginmanager.hasplugin("xdist") and config.getoption("maxschedchunk", None) is None:
        config.option.maxschedchunk = 1


def pytest_unconfigure(config):
    # Each pytest process (and xdist worker) made its own; leave nothing behind in /tmp.
    if _THROWAWAY_CACHE is not None:
        import shutil

        shutil.rmtree(_THROWAWAY_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Slow tests first: pytest-xdist hands tests out in this order, so the long ones start at
    once on both workers instead of one of them finishing the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _clear_keras_session():
    """Fresh layer-name counters per test, so names never depend on test order."""
    import keras

    keras.backend.clear_session()
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real (short) training run on the digits data: checkpoints, history, plots, run.json."""
    import keras

    from efficientnet_tf.training import TrainConfig, Trainer

    keras.backend.clear_session()
    model_dir = str(tmp_path_factory.mktemp("tiny_run"))
    config = TrainConfig.from_settings(model="efficientnet-lite0", dataset="digits", model_dir=model_dir, epochs=2, steps_per_epoch=4,
                                       batch_size=32, image_size=32, learning_rate=0.008, lr_schedule="cosine", warmup_epochs=0.5,
                                       seed=0)
    report = Trainer(config, verbose=False).fit()
    return model_dir, report


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of tiny_run's directory, for a test to change or damage."""
    import shutil

    model_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run[0], model_dir)
    return model_dir
