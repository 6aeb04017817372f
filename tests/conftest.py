import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# pytest-xdist's N workers share the cores: N processes each running every op on all cores fight
# over them (2 workers on 2 cores: 18% more wall time than one core each, 305 s against 259 s).
# Training subprocesses inherit the share.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _SHARE = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _SHARE)
    os.environ.setdefault("OMP_NUM_THREADS", _SHARE)
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


def pytest_unconfigure(config):
    # Each pytest process (and xdist worker) made its own; leave nothing behind in /tmp.
    if _THROWAWAY_CACHE is not None:
        import shutil

        shutil.rmtree(_THROWAWAY_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Slow tests first, dealt out evenly over the xdist workers' first chunks.

    xdist's load scheduling hands each of the N workers a first chunk of (tests // N) // 4
    consecutive tests, then one test at a time to whichever is free. With every slow test at the
    front, the first chunk held them all: one worker ran the slow tests (3,623 of 6,392 s of test
    time on one machine) while the other ran out of work, and the run took that worker's time
    (66 min). Here chunk k holds every N-th slow test from the k-th on, then fast tests, so
    each worker starts with its share of the slow ones and no long test starts at the end."""
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    fast = [item for item in items if item.get_closest_marker("slow") is None]
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    chunk = max(len(items) // workers // 4, 2)
    if workers < 2 or len(slow) > chunk * workers:
        items[:] = slow + fast
        return
    ordered, rest = [], iter(fast)
    for worker in range(workers):
        share = slow[worker::workers]
        ordered += share + [item for _, item in zip(range(chunk - len(share)), rest)]
    items[:] = ordered + list(rest)


def _resident_bytes():
    """This process's resident memory (Linux), or None where /proc is not there."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


_COLLECT_AFTER_GROWTH = 1 << 30
_resident_at_last_collection = [0]


@pytest.fixture(autouse=True)
def _clear_keras_session():
    """Fresh layer-name counters per test, so names never depend on test order.

    A full garbage collection walks every live object (TensorFlow's modules included): it took
    0.5-2.8 s before each test, about 450 s of the suite's 3,200 s of test time. It runs only
    when this process has grown by a GiB since the last one (the models of the largest variants
    live in reference cycles), or always where the resident size cannot be read."""
    import gc

    import keras

    keras.backend.clear_session(free_memory=False)
    resident = _resident_bytes()
    if resident is None or resident > _resident_at_last_collection[0] + _COLLECT_AFTER_GROWTH:
        gc.collect()
        _resident_at_last_collection[0] = _resident_bytes() or 0
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
