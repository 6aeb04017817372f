"""How well each EfficientNet family survives TFLite quantization and ONNX, on a model trained here.

Trains each model on the offline digits data (the flags/digits_demo.cfg recipe), exports every
format (`export_run`), and prints per format: size, batch-1 latency (all formats timed in one
process, interleaved), top-1 agreement with the float Keras model on every image of the dataset
(digits: 1,797; agreement needs no labels) and on the eval split alone (images the model did not
train on), and the change of top-1 on the eval split. Then the
ratios behind the goals: int8_selective's agreement, its latency against full int8 and float32
TFLite; Lite0's full int8 agreement.

    python benchmarks/quantization.py                                   # lite0, b0, v2-b0: ~25 min on 2 cores
    python benchmarks/quantization.py --models efficientnet-lite0 --formats int8 int8_selective
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import common  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)

FORMATS = ["float32", "float16", "dynamic", "int8", "int8_selective", "int16x8", "onnx"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet-lite0", "efficientnet-b0", "efficientnetv2-b0"])
    parser.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS,
                        help="TFLite formats, and onnx for model.onnx")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--target", type=float, default=0.995, help="int8_selective's target agreement")
    parser.add_argument("--keep", help="keep the runs under this directory (default: temporary)")
    args = parser.parse_args(argv)

    import keras

    from efficientnet_tf.deploy.export import export_run
    from efficientnet_tf.deploy.int8_search import kept_float_summary
    from efficientnet_tf.training import TrainConfig, Trainer

    print(f"machine: {common.machine()}")
    tflite = [f for f in args.formats if f != "onnx"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        for name in args.models:
            keras.backend.clear_session()
            model_dir = os.path.join(root, name)
            config = TrainConfig.from_settings(model=name, dataset="digits", model_dir=model_dir, epochs=args.epochs, batch_size=64,
                                               learning_rate=0.008, lr_schedule="cosine", warmup_epochs=1, seed=0)
            report = Trainer(config, verbose=False).fit()
            export = export_run(model_dir, tflite=tflite, onnx="onnx" in args.formats, check_images=0,
                                int8_target_agreement=args.target)
            compared = dict(export.get("tflite", {}), **({"onnx": export["onnx"]} if "onnx" in export else {}))
            print(f"\n{name}: float top-1 {report['top1']:.4f} on {report['images']} eval images")
            print(f"{'format':<16}{'size MB':>9}{'ms/img':>9}{'agreement':>11}{'images':>8}{'eval agr.':>11}"
                  f"{'top-1 change':>14}")
            for fmt in args.formats:
                if fmt not in compared:
                    print(f"{fmt:<16} not exported: {export.get('failed', {}).get(fmt, '?')}")
                    continue
                entry = compared[fmt]
                print(f"{fmt:<16}{entry['size_bytes'] / 1e6:>9.2f}{entry['latency_ms_batch1']:>9.2f}"
                      f"{entry['agreement']:>11.4f}{entry['images']:>8}{entry['eval_agreement']:>11.4f}"
                      f"{entry.get('top1_change', 0):>+14.4f}")
                rows.append((name, fmt, entry))
            selective = export.get("int8_selective")
            if selective:
                print(f"int8_selective: {kept_float_summary(selective)}; search agreement {selective['search_agreement']:.4f} on "
                      f"{selective['search_images']} training images (target {selective['target_agreement']}"
                      f"{', met' if selective['target_met'] else ', not met: ' + selective['reason']})")
                print("search steps (dynamic-range head ops or float tail ops -> agreement): "
                      + ", ".join(f"{'head' if s['method'] == 'dynamic_head' else 'tail'} "
                                  f"{s['dynamic_ops'] if s['method'] == 'dynamic_head' else s['float_ops']} -> "
                                  f"{s['agreement']:.4f}" for s in selective["steps"]))
                for other in ("int8", "float32"):
                    if other in compared:
                        ratio = compared["int8_selective"]["latency_ms_batch1"] / compared[other]["latency_ms_batch1"]
                        print(f"ratio latency int8_selective/{other} {name}: {ratio:.2f}x")
            print(flush=True)
    print("\n| model | format | size (MB) | batch-1 latency (ms) | agreement (all images) | agreement (eval split) "
          "| top-1 change (eval) |")
    print("|---|---|---|---|---|---|---|")
    for name, fmt, entry in rows:
        print(f"| {name} | {fmt} | {entry['size_bytes'] / 1e6:.2f} | {entry['latency_ms_batch1']:.2f} | "
              f"{entry['agreement']:.4f} | {entry['eval_agreement']:.4f} | {entry.get('top1_change', 0):+.4f} |")
    print(f"\n{'model':<20}" + "".join(f"{f:>16}" for f in args.formats))
    by_model = {}
    for name, fmt, entry in rows:
        by_model.setdefault(name, {})[fmt] = entry["agreement"]
    for name, agreements in by_model.items():
        print(f"{name:<20}" + "".join(f"{agreements[f]:>16.4f}" if f in agreements else f"{'-':>16}"
                                      for f in args.formats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
