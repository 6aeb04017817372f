"""Input pipeline vs model: can tf.data feed EfficientNet training on this machine?

Measures, interleaved in one process so machine noise hits both alike:
  * pipeline images/s: JPEG decode + inception crop + resize + flip + batched RandAugment,
    reading a folder of ImageNet-sized JPEGs written to a temporary directory;
  * model images/s: one training step (forward + backward + RMSprop update) of the model at
    the same image size and batch;
and prints their ratio (goal: >= 3x for efficientnet-b0 at 224).

    python benchmarks/input_pipeline.py                 # b0, 224px, batch 32
    python benchmarks/input_pipeline.py --quick         # small and fast: keeps the script working
    python benchmarks/input_pipeline.py --json out.json # also write the figures and raw rounds
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def write_jpegs(root: str, count: int, size=(375, 500), classes: int = 10) -> None:
    """Smooth random JPEGs (ImageNet's typical 500x375) so decode costs what real photos cost."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        small = rng.integers(0, 255, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC).save(os.path.join(folder, f"{i}.jpg"), quality=90)


def timed_round(fn, calls: int, count_images) -> dict:
    """{"items": images really produced, "seconds": wall time} of `calls` calls of fn."""
    images = 0
    start = time.perf_counter()
    for _ in range(calls):
        images += count_images(fn())
    return {"items": images, "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet-b0")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--batches", type=int, default=8, help="batches per measurement")
    parser.add_argument("--drain", type=int, default=8, help="untimed batches before each pipeline measurement")
    parser.add_argument("--randaug_layers", type=int, default=2)
    parser.add_argument("--randaug_magnitude", type=float, default=9)
    parser.add_argument("--quick", action="store_true", help="64px, batch 8, 2 rounds: seconds, not minutes")
    parser.add_argument("--json", help="also write the figures and every round's images and seconds here")
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.batch_size, args.rounds, args.batches, args.drain = 64, 8, 2, 4, 4

    import keras

    from efficientnet_tf import build_model
    from efficientnet_tf.data.augment import AugmentConfig
    from efficientnet_tf.data import get_source
    from efficientnet_tf.data.pipeline import PipelineConfig, make_dataset

    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, count=max(64, args.batch_size * 4))
        source = get_source(f"folder:{root}", validation_fraction=0.1)
        config = PipelineConfig(
            image_size=args.image_size,
            global_batch_size=args.batch_size,
            augment=AugmentConfig(args.randaug_layers, args.randaug_magnitude),
            seed=0,
        )
        dataset = make_dataset(source, config, training=True, repeat=True)

        model = build_model(args.model, num_classes=source.num_classes, input_shape=(args.image_size,) * 2 + (3,))
        model.compile(optimizer=keras.optimizers.RMSprop(0.01, rho=0.9, momentum=0.9, epsilon=1e-3),
                      loss="sparse_categorical_crossentropy", jit_compile=False)
        images = tf.random.uniform((args.batch_size, args.image_size, args.image_size, 3), 0, 255)
        labels = tf.zeros((args.batch_size,), tf.int32)
        model.train_on_batch(images, labels)  # warm-up: traces the train step

        pipeline_rounds, model_rounds = [], []
        for _ in range(args.rounds):
            # A fresh iterator per round, drained past its prefetch buffer before timing, and
            # deleted before the model runs: neither side borrows the other's CPU time.
            batches = iter(dataset)
            for _ in range(args.drain):
                next(batches)
            # Count the images each batch really holds, so a pipeline yielding short batches
            # cannot look fast.
            pipeline_rounds.append(timed_round(lambda: next(batches), args.batches, lambda b: int(b[0].shape[0])))
            del batches
            model_rounds.append(timed_round(lambda: model.train_on_batch(images, labels), args.batches,
                                            lambda _: args.batch_size))
    pipe, step = common.median_rate(pipeline_rounds), common.median_rate(model_rounds)
    print(f"machine: {os.cpu_count()} CPU cores, TF {tf.__version__}")
    print(f"settings: {args.model} {args.image_size}px batch {args.batch_size}, "
          f"RandAugment {args.randaug_layers}x{args.randaug_magnitude:g}, {args.rounds} interleaved rounds")
    print(f"pipeline (decode+crop+augment): {pipe:8.1f} images/s")
    print(f"model train step:               {step:8.1f} images/s")
    print(f"ratio pipeline/model: {pipe / step:.2f}x (goal >= 3x)")
    common.write_json(args.json, {
        "settings": {"model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
                     "rounds": args.rounds, "batches": args.batches, "randaug_layers": args.randaug_layers,
                     "randaug_magnitude": args.randaug_magnitude},
        "pipeline": {"images_per_sec": pipe, "rounds": pipeline_rounds},
        "model": {"images_per_sec": step, "rounds": model_rounds},
        "ratio": pipe / step,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
