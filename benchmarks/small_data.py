"""Small data: the batch resolved from the dataset's size against the old fixed batch of 64.

Builds a folder of real photos that installed packages ship, one class per photo (scikit-image's
astronaut, chelsea, coffee and rocket, scikit-learn's china): 112 training crops from the left 60%
of each photo, 20 held-out crops per class from the right 40% (no pixel shared with training),
saved as PNG in train/ and val/. Then trains the same model from scratch twice per seed, for the
same epochs, seeds interleaved: `batch_size=64` (the default before it resolved: 1 step per epoch
here) and the batch left unset (resolved: `training.plan.resolve_batch_size`). Everything else is
the library's default. Prints batch, steps per epoch, BN momentum, peak LR and held-out top-1 per
run, and writes them as JSON.

    python benchmarks/small_data.py              # B0 at 64 px, 20 epochs, seeds 0 1 (~8 min on 2 CPUs)
    python benchmarks/small_data.py --quick --json out.json    # Lite0 at 32 px, 2 epochs, seed 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import common  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)
import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "small_data.json")
TRAIN_IMAGES, EVAL_PER_CLASS = 112, 20
TRAIN_SHARE = 0.6  # of each photo's width: training crops left of it, held-out crops right of it


def photos() -> dict[str, np.ndarray]:
    """{class name: uint8 RGB photo} from the packages' own sample data (no download)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    shipped = {name: getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    sample = load_sample_images()
    shipped["china"] = sample.images[[os.path.basename(f) for f in sample.filenames].index("china.jpg")]
    return shipped


def random_crops(photo: np.ndarray, count: int, left: float, right: float, size: int, rng) -> list[np.ndarray]:
    """`count` square crops between `left` and `right` (shares of the width), each 30-50% of the
    region's shorter side, resized to `size` pixels."""
    from PIL import Image

    height, width = photo.shape[:2]
    x0, x1 = int(left * width), int(right * width)
    shorter = min(height, x1 - x0)
    crops = []
    for _ in range(count):
        side = int(rng.uniform(0.3, 0.5) * shorter)
        x, y = rng.integers(x0, x1 - side + 1), rng.integers(0, height - side + 1)
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
        crops.append(np.asarray(crop))
    return crops


def build_folder(root: str, size: int, seed: int = 0) -> dict:
    """train/CLASS/*.png and val/CLASS/*.png under `root`; returns the counts per split."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    shipped = photos()
    names = sorted(shipped)
    train_counts = [TRAIN_IMAGES // len(names) + (i < TRAIN_IMAGES % len(names)) for i in range(len(names))]
    for name, train_count in zip(names, train_counts):
        for split, count, left, right in (("train", train_count, 0.0, TRAIN_SHARE),
                                          ("val", EVAL_PER_CLASS, TRAIN_SHARE, 1.0)):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i, crop in enumerate(random_crops(shipped[name], count, left, right, size, rng)):
                Image.fromarray(crop).save(os.path.join(folder, f"{i:03d}.png"))
    return {"classes": names, "train": dict(zip(names, train_counts)), "val": {n: EVAL_PER_CLASS for n in names}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet-b0")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="lite0 at 32 px, 2 epochs, seed 0")
    parser.add_argument("--json", default=RESULTS, help=f"where the figures go (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.image_size, args.epochs, args.seeds = "efficientnet-lite0", 32, 2, [0]

    import keras

    from efficientnet_tf.training import TrainConfig, Trainer

    machine = common.machine()
    print(f"machine: {machine}")
    variants = {"batch 64 (old default)": {"batch_size": 64}, "unset (resolved)": {}}
    runs = {label: {"settings": extra, "seeds": []} for label, extra in variants.items()}
    with tempfile.TemporaryDirectory() as work:
        folder = os.path.join(work, "photos")
        counts = build_folder(folder, size=max(96, args.image_size))
        print(f"folder: {len(counts['classes'])} classes ({', '.join(counts['classes'])}), "
              f"{sum(counts['train'].values())} train / {sum(counts['val'].values())} held-out crops")
        for seed in args.seeds:  # interleaved: both variants per seed, so machine drift hits both
            for label, extra in variants.items():
                keras.backend.clear_session()
                config = TrainConfig.from_settings(model=args.model, dataset=f"folder:{folder}",
                                                   image_size=args.image_size, epochs=args.epochs, seed=seed,
                                                   model_dir=os.path.join(work, f"run-{seed}-{len(extra)}"), **extra)
                trainer = Trainer(config, verbose=False)
                trainer.fit(validate=False)
                report = trainer.evaluate()
                run = {"seed": seed, "batch_size": trainer.config.run.batch_size,
                       "steps_per_epoch": trainer.steps_per_epoch, "bn_momentum": trainer.bn_momentum,
                       "peak_learning_rate": trainer.base_lr, "top1": float(report["top1"]),
                       "eval_images": report["images"]}
                runs[label]["seeds"].append(run)
                print(f"seed {seed} {label:<24} batch {run['batch_size']:>3}, {run['steps_per_epoch']:>3} steps/epoch, "
                      f"top-1 {run['top1']:.3f}", flush=True)

    print(f"\n{args.model}, {args.image_size} px, {args.epochs} epochs, seeds {' '.join(map(str, args.seeds))}")
    print("| batch_size | batch | steps/epoch | BN momentum | peak LR | top-1 per seed | mean top-1 |")
    print("|---|---|---|---|---|---|---|")
    for label, result in runs.items():
        first = result["seeds"][0]
        top1 = [r["top1"] for r in result["seeds"]]
        result["mean_top1"] = statistics.mean(top1)
        print(f"| {label} | {first['batch_size']} | {first['steps_per_epoch']} | {first['bn_momentum']:.3f} | "
              f"{first['peak_learning_rate']:.2g} | {', '.join(f'{t:.3f}' for t in top1)} | "
              f"**{result['mean_top1']:.3f}** |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    common.write_json(args.json, {
        "machine": machine, "model": args.model, "image_size": args.image_size, "epochs": args.epochs,
        "seeds": args.seeds, "folder": counts, "runs": runs,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
