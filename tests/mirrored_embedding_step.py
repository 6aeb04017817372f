"""One embedding train step on one device and on two replicas, then one int8-aware step on each
(quantization-aware fine-tuning: ranges measured, then gathered over the replicas), in a fresh
process: TensorFlow caches collective-op parameters per process, and strategies of earlier tests
with other layer shapes would collide with this one's. Writes the results to the .npz named on the
command line.

    python tests/mirrored_embedding_step.py OUT.npz LOSS HEAD MODEL_DIR
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)

from efficientnet_tf.data.pipeline import make_dataset  # noqa: E402
from efficientnet_tf.training import TrainConfig, Trainer  # noqa: E402


def main(out, loss, head, model_dir):
    config = TrainConfig.from_settings(
        task="embedding", loss=loss, embedding_head=head, model="efficientnet-b0", dataset="digits", batch_size=16,
        image_size=32, dropout_rate=0.0, drop_connect_rate=0.0, label_smoothing=0.0, seed=0,
        ema_decay=0.0, embedding_dim=64, margin_scale=16.0, sync_batch_norm=True, model_dir=model_dir,
        quantization_aware_epochs=1, epochs=2)  # epoch 1 plain (the first step), epoch 2 int8-aware
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    single = Trainer(config, verbose=False, strategy=tf.distribute.OneDeviceStrategy(devices[0]))
    mirrored = Trainer(config, verbose=False, strategy=tf.distribute.MirroredStrategy(devices))
    mirrored.model.set_weights(single.model.get_weights())
    mirrored.task.centres.set_weights(single.task.centres.get_weights())
    centres_before = single.task.centres.get_weights()[0].copy()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 7, 16).astype(np.int32)
    results = {}
    for name, trainer in (("single", single), ("mirrored", mirrored)):
        loss_value, correct = trainer.train_on_batch(images, labels)
        results[f"{name}_loss"], results[f"{name}_correct"] = loss_value, correct
        results[f"{name}_replicas"] = trainer.replicas
        results[f"{name}_centres"] = trainer.task.centres.get_weights()[0]
        for i, weight in enumerate(trainer.model.get_weights()):
            results[f"{name}_weight{i}"] = weight

    # The int8-aware phase from these weights: ranges over the calibration images, then a step on
    # a batch of the training pipeline through the rounded graph.
    for name, trainer in (("single", single), ("mirrored", mirrored)):
        trainer.enter_int8_aware(trainer.stages[0], epoch=1, fresh=True)
        ranges = trainer.int8_aware.model.ranges()
        results[f"{name}_int8_range_names"] = np.array(sorted(ranges))
        results[f"{name}_int8_ranges"] = np.array([ranges[key] for key in sorted(ranges)], np.float64)
    stage = single.stages[0]
    images, labels = next(iter(make_dataset(single.source, single._pipeline(stage, True), training=True)))
    for name, trainer in (("single", single), ("mirrored", mirrored)):
        results[f"{name}_int8_loss"], _ = trainer.train_on_batch(images, labels, int8_aware=True)
        for i, weight in enumerate(trainer.model.get_weights()):
            results[f"{name}_int8_weight{i}"] = weight
    np.savez(out, centres_before=centres_before, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
