"""Inference latency and throughput: Keras model, SavedModel, TFLite float32/float16/int8.

One model (random weights, or a trained run with --model_dir) is exported once; each format is
then timed round-robin in this process at batch 1 and batch 32. The int8 model is calibrated on
the run's training pipeline (with --model_dir) or on random images.

    python benchmarks/inference.py                                     # efficientnet-lite0 and b0 at 224
    python benchmarks/inference.py --model_dir=runs/efficientnet-lite0-digits
    python benchmarks/inference.py --quick                             # lite0 at 64 px: about a minute
    python benchmarks/inference.py --quick --json out.json             # also write figures + raw rounds
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import common  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)

FORMATS = ("float32", "float16", "int8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet-lite0", "efficientnet-b0"])
    parser.add_argument("--model_dir", help="a training run to export instead of random weights")
    parser.add_argument("--image_size", type=int, default=None, help="default: the model's resolution")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--calls", type=int, default=10, help="calls per measurement (batch 1; fewer for large batches)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="lite0 at 64 px, 2 rounds")
    parser.add_argument("--json", help="also write the table (with every round's images and seconds) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.image_size, args.rounds, args.calls = ["efficientnet-lite0"], 64, 2, 5

    import keras
    import numpy as np
    import tensorflow as tf

    from efficientnet_tf import build_model
    from efficientnet_tf.models.configs import get_config
    from efficientnet_tf.deploy.export import load_trained_model
    from efficientnet_tf.deploy.saved_model import export_saved_model
    from efficientnet_tf.deploy.tflite import TFLiteRunner, export_tflite

    print(f"machine: {common.machine()}")
    rng = np.random.default_rng(0)
    models = [args.model_dir] if args.model_dir else args.models
    results = []
    for entry in models:
        keras.backend.clear_session()
        if args.model_dir:
            model, info = load_trained_model(args.model_dir)
            name, size, class_names = info["model"], int(info["image_size"]), info["class_names"]
        else:
            name, size = entry, args.image_size or get_config(entry).resolution
            model = build_model(name, input_shape=(size, size, 3), classifier_activation=None)
            class_names = [str(i) for i in range(model.output_shape[-1])]
        calibration = [rng.uniform(0, 255, (1, size, size, 3)).astype("float32") for _ in range(16)]
        if args.model_dir:
            from efficientnet_tf.deploy.calibration import pipeline_images

            calibration = list(pipeline_images(args.model_dir, 64, training=True)[0][:, None])
        with tempfile.TemporaryDirectory() as tmp:
            export_saved_model(model, os.path.join(tmp, "saved_model"), class_names, size)
            serving = tf.saved_model.load(os.path.join(tmp, "saved_model")).signatures["serving_default"]
            paths = export_tflite(model, tmp, FORMATS, calibration)
            print(f"\n{name} at {size}px: SavedModel and TFLite {', '.join(FORMATS)} "
                  f"({', '.join(f'{q} {os.path.getsize(p) / 1e6:.1f} MB' for q, p in paths.items())})")
            print(f"{'format':<18} {'batch':>5} {'ms/batch':>9} {'images/s':>9}")
            result = {"model": name, "image_size": size,
                      "file_bytes": {q: os.path.getsize(p) for q, p in paths.items()}, "batches": []}
            results.append(result)
            for batch in args.batches:
                images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
                tensor = tf.constant(images)
                runners = {"keras": lambda: model.predict_on_batch(images),
                           "saved_model": lambda: serving(images=tensor)["probabilities"].numpy()}
                for q, path in paths.items():
                    runner = TFLiteRunner(path)
                    runners[f"tflite_{q}"] = lambda r=runner: r(images)
                for fn in runners.values():
                    fn()  # warm-up (allocation, tracing)
                calls = max(2, args.calls // max(1, batch // 8))
                samples = {}
                # Images counted from each call's output rows: a runner that silently served
                # fewer images than it was given cannot look fast.
                rates = common.interleaved(runners, calls, args.rounds, batch, samples=samples,
                                           count_items=lambda out: int(np.shape(out)[0]))
                for label, rate in rates.items():
                    print(f"{label:<18} {batch:>5} {1e3 * batch / rate:>9.2f} {rate:>9.1f}")
                speedup = rates["tflite_int8"] / rates["saved_model"]
                print(f"ratio tflite_int8/saved_model {name} batch {batch}: {speedup:.2f}x")
                result["batches"].append({
                    "batch": batch, "speedup_tflite_int8_vs_saved_model": speedup,
                    "formats": {k: {"images_per_sec": rates[k], "ms_per_batch": 1e3 * batch / rates[k],
                                    "rounds": samples[k]} for k in runners}})
    common.write_json(args.json, {"machine": common.machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
