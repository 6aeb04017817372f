"""How well each EfficientNet family survives TFLite quantization, on a model trained here.

Trains each model on the offline digits data (the flags/digits_demo.cfg recipe), exports every
TFLite variant, and prints top-1 agreement of each with the float Keras model on the whole eval
split. Lite (ReLU6, no squeeze-excite) is built for int8; B0/V2's swish and SE lose more.

    python benchmarks/quantization.py                                   # lite0, b0, v2-b0: ~10 min on 2 cores
    python benchmarks/quantization.py --models efficientnet-lite0 --formats int8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import common  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet-lite0", "efficientnet-b0", "efficientnetv2-b0"])
    parser.add_argument("--formats", nargs="+", default=["float16", "dynamic", "int8", "int16x8"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--keep", help="keep the runs under this directory (default: temporary)")
    args = parser.parse_args(argv)

    import keras

    from efficientnet_tf.deploy.export import export_run
    from efficientnet_tf.training import TrainConfig, Trainer

    print(f"machine: {common.machine()}")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        for name in args.models:
            keras.backend.clear_session()
            model_dir = os.path.join(root, name)
            config = TrainConfig.from_settings(model=name, dataset="digits", model_dir=model_dir, epochs=args.epochs, batch_size=64,
                                               learning_rate=0.008, lr_schedule="cosine", warmup_epochs=1, seed=0)
            report = Trainer(config, verbose=False).fit()
            export = export_run(model_dir, tflite=args.formats)
            cells = [f"{q} {export['tflite'][q]['agreement']:.4f}" for q in args.formats]
            print(f"{name}: float top-1 {report['top1']:.4f} on {report['images']} images; agreement with float: "
                  + ", ".join(cells), flush=True)
            summary.append((name, export["tflite"]))
    print(f"\n{'model':<20}" + "".join(f"{q:>10}" for q in args.formats))
    for name, tflite in summary:
        print(f"{name:<20}" + "".join(f"{tflite[q]['agreement']:>10.4f}" for q in args.formats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
