"""Progressive learning (EfficientNetV2, Algorithm 1) against a fixed image size, same epoch budget.

Trains the same model twice on the same data and seed: once at a fixed size, once with
`--progressive` stages rising from a small size to that size (regularization rising too). Prints
the training time to reach a target validation accuracy and the final accuracy of each; the
ratio is reported whichever way it goes. Training time is the sum of the epochs' train phases
(history.csv's images/s), so evaluation cost does not blur it.

    python benchmarks/progressive.py                         # digits, B0, 15 epochs, 32->64 px vs 64 px
    python benchmarks/progressive.py --dataset=cifar10 --epochs=30 --target=0.85
    python benchmarks/progressive.py --quick                 # lite0, 2 short epochs: about two minutes
    python benchmarks/progressive.py --quick --json out.json # also write figures + every epoch
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import common  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)


def time_to_target(rows, batch_size: int, target: float):
    elapsed, reached = 0.0, None
    for row in rows:
        steps_images = float(row["images_per_epoch"])
        elapsed += steps_images / float(row["images_per_sec"])
        if reached is None and float(row["val_accuracy"]) >= target:
            reached = (int(row["epoch"]) + 1, elapsed)
    return reached, elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet-b0")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--min_size", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--target", type=float, default=0.95, help="validation top-1 to reach")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps_per_epoch", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="lite0, 2 epochs of 4 steps, 2 stages, 32->48 px")
    parser.add_argument("--json", help="also write both runs' epochs (size, images, images/s, val top-1) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.epochs, args.stages, args.size, args.steps_per_epoch, args.target = (
            "efficientnet-lite0", 2, 2, 48, 4, 0.2)

    import keras

    from efficientnet_tf.training import TrainConfig, Trainer, read_history

    print(f"machine: {common.machine()}")
    common_args = dict(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                       image_size=args.size, learning_rate=0.008, lr_schedule="cosine",
                       warmup_epochs=1 if args.epochs > 2 else 0, steps_per_epoch=args.steps_per_epoch, seed=0)
    variants = {
        "fixed": dict(),
        "progressive": dict(progressive=args.stages, progressive_min_size=args.min_size,
                            progressive_min_dropout=0.1, progressive_max_dropout=0.2,
                            progressive_min_randaug=0.0),  # no RandAugment in either run
    }
    results, runs = {}, {}
    for label, extra in variants.items():
        keras.backend.clear_session()
        with tempfile.TemporaryDirectory() as model_dir:
            trainer = Trainer(TrainConfig.from_settings(model_dir=model_dir, **common_args, **extra), verbose=False)
            report = trainer.fit()
            rows = read_history(model_dir)
            for row in rows:
                row["images_per_epoch"] = trainer.steps_per_epoch * args.batch_size
            reached, total = time_to_target(rows, args.batch_size, args.target)
            sizes = sorted({int(r["image_size"]) for r in rows})
            results[label] = (reached, total, report["top1"])
            runs[label] = {
                "sizes": sizes, "train_seconds": total, "final_top1": float(report["top1"]),
                "reached_target": None if reached is None else {"epoch": reached[0], "train_seconds": reached[1]},
                "epochs": [{"epoch": int(r["epoch"]), "image_size": int(r["image_size"]),
                            "images": r["images_per_epoch"], "images_per_sec": float(r["images_per_sec"]),
                            "val_accuracy": float(r["val_accuracy"])} for r in rows],
            }
            reach = f"epoch {reached[0]}, {reached[1]:.1f} s" if reached else "not reached"
            print(f"{label:<12} sizes {sizes}: train time {total:.1f} s, final top-1 {report['top1']:.4f}, "
                  f"target {args.target} {reach}", flush=True)
    (fixed_reach, fixed_total, _), (prog_reach, prog_total, _) = results["fixed"], results["progressive"]
    print(f"ratio train time fixed/progressive (whole budget): {fixed_total / prog_total:.2f}x")
    if fixed_reach and prog_reach:
        print(f"ratio time-to-target fixed/progressive: {fixed_reach[1] / prog_reach[1]:.2f}x")
    else:
        print("ratio time-to-target: n/a (" + ", ".join(k for k, v in results.items() if not v[0]) + " did not reach it)")
    common.write_json(args.json, {
        "machine": common.machine(), "target": args.target, "batch_size": args.batch_size, "runs": runs,
        "ratio_whole_budget": fixed_total / prog_total,
        "ratio_time_to_target": fixed_reach[1] / prog_reach[1] if fixed_reach and prog_reach else None,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
