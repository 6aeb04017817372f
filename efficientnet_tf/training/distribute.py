"""Pick the tf.distribute strategy and the mixed-precision policy for this machine."""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from efficientnet_tf.settings import SettingError
from efficientnet_tf.training.config import STRATEGIES

log = logging.getLogger(__name__)


def _tf_config_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(kind: str = "auto", tpu: str | None = None) -> tf.distribute.Strategy:
    """auto: TPU when `tpu` is given, multi-worker when TF_CONFIG names several workers,
    mirrored over several GPUs, else the default (one device) strategy."""
    if kind not in STRATEGIES:
        raise SettingError("strategy", f"unknown strategy {kind!r}; choose from {', '.join(STRATEGIES)}")
    if kind == "auto":
        if tpu:
            kind = "tpu"
        elif _tf_config_workers() > 1:
            kind = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            kind = "mirrored"
        elif tf.config.list_physical_devices("GPU"):
            kind = "gpu"
        else:
            kind = "cpu"
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise SettingError("strategy", "strategy 'gpu' but TensorFlow sees no GPU; use 'auto' or 'cpu'")
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.get_strategy()  # default strategy: one CPU


def device_kind(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TF's own placement, GPU when there is one
        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    return "gpu" if any("GPU" in d.upper() for d in devices) else "cpu"


def mixed_precision_policy(strategy: tf.distribute.Strategy, enabled: bool) -> str:
    """bfloat16 on TPU and CPU, float16 (with loss scaling) on GPU; logits stay float32."""
    if not enabled:
        return "float32"
    return "mixed_float16" if device_kind(strategy) == "gpu" else "mixed_bfloat16"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The worker that writes checkpoints, logs and plots (worker 0 / the chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """Processes that train together (1 unless a multi-worker cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))
