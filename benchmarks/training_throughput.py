"""Training throughput: our EfficientNets against keras.applications, same step, same batch.

For each model and image size, one tf.function train step (forward + backward + RMSprop update,
softmax cross-entropy) is built for our model and for the keras.applications model with the
same architecture, and both are timed round-robin in this process. Prints images/s, the ratio
ours/keras (goal >= 1.0), and achieved FLOP/s as a fraction of the measured matmul peak
(training FLOPs per image = 3 x forward = 6 x multiply-adds, the usual estimate).

    python benchmarks/training_throughput.py                  # B0, B3, V2-S at 32 px and native, XLA off/on
    python benchmarks/training_throughput.py --models efficientnet-b0 --sizes 224 --xla off
    python benchmarks/training_throughput.py --quick          # B0 at 32 px, XLA off/on: about a minute
    python benchmarks/training_throughput.py --breakdown --sizes 224   # where B0's step time goes
    python benchmarks/training_throughput.py --quick --json out.json  # also write figures + raw rounds

--breakdown answers "where does the time go" by ablation, measured interleaved like the rest:
B0 as published against B0 without squeeze-excite, with ReLU instead of swish, and without
stochastic depth. (Measurement only: the shipped models keep the published math.)
"""

from __future__ import annotations

import argparse
import sys

import common  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)

KERAS_NAMES = {"efficientnet-b0": "EfficientNetB0", "efficientnet-b3": "EfficientNetB3",
               "efficientnetv2-s": "EfficientNetV2S", "efficientnetv2-b0": "EfficientNetV2B0"}


def train_step(model, jit_compile: bool):
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.RMSprop(1e-4, rho=0.9, momentum=0.9, epsilon=1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet-b0", "efficientnet-b3", "efficientnetv2-s"])
    parser.add_argument("--sizes", nargs="+", default=["32", "native"], help="pixel sizes or 'native'")
    parser.add_argument("--xla", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--quick", action="store_true", help="B0 at 32 px, batch 16, XLA off/on, 2 rounds")
    parser.add_argument("--breakdown", action="store_true", help="ablate SE / swish / stochastic depth of B0")
    parser.add_argument("--json", help="also write the table (with every round's images and seconds) here")
    args = parser.parse_args(argv)
    if args.breakdown:
        return breakdown(args)
    if args.quick:
        args.models, args.sizes, args.batch_size, args.steps, args.rounds = ["efficientnet-b0"], ["32"], 16, 3, 2

    import keras
    import numpy as np
    import tensorflow as tf

    from efficientnet_tf import build_model
    from efficientnet_tf.models.configs import get_config
    from efficientnet_tf.models.flops import count_macs

    peak = common.measured_peak_flops()
    print(f"machine: {common.machine()}")
    print(f"peak: {peak / 1e9:.1f} GFLOP/s (best float32 2048x2048 matmul, all cores)")
    print(f"{'model':<18} {'size':>5} {'XLA':>4} {'ours img/s':>11} {'keras img/s':>12} {'ratio':>6} {'% peak':>7}")
    rng = np.random.default_rng(0)
    rows = []
    for name in args.models:
        for size_arg in args.sizes:
            size = get_config(name).resolution if size_arg == "native" else int(size_arg)
            images = tf.constant(rng.uniform(0, 255, (args.batch_size, size, size, 3)).astype("float32"))
            labels = tf.constant(rng.integers(0, 1000, args.batch_size).astype("int32"))
            keras.backend.clear_session()
            ours = build_model(name, input_shape=(size, size, 3), classifier_activation=None)
            reference = getattr(keras.applications, KERAS_NAMES[name])(
                weights=None, input_shape=(size, size, 3), classifier_activation=None)
            train_flops = 6 * count_macs(ours)
            for xla in args.xla:
                steps = {"ours": train_step(ours, xla == "on"), "keras": train_step(reference, xla == "on")}
                for step in steps.values():  # compile + warm-up
                    step(images, labels).numpy()
                    step(images, labels).numpy()
                samples = {}
                rates = common.interleaved({k: (lambda s=s: s(images, labels).numpy()) for k, s in steps.items()},
                                           args.steps, args.rounds, args.batch_size, samples=samples)
                ratio = rates["ours"] / rates["keras"]
                fraction = rates["ours"] * train_flops / peak
                print(f"{name:<18} {size:>5} {xla:>4} {rates['ours']:>11.1f} {rates['keras']:>12.1f} {ratio:>5.2f}x "
                      f"{100 * fraction:>6.1f}%", flush=True)
                print(f"ratio ours/keras {name} {size}px XLA {xla}: {ratio:.2f}x")
                rows.append({"model": name, "size": size, "xla": xla, "batch_size": args.batch_size,
                             "train_flops_per_image": train_flops, "ratio": ratio, "fraction_of_peak": fraction,
                             **{k: {"images_per_sec": rates[k], "rounds": samples[k]} for k in steps}})
    common.write_json(args.json, {"machine": common.machine(), "peak_flops": peak, "rows": rows})
    return 0


def breakdown(args) -> int:
    import keras
    import numpy as np
    import tensorflow as tf

    from efficientnet_tf import build_efficientnet, get_config
    from efficientnet_tf.models.configs import custom_config

    base = get_config("efficientnet-b0")
    no_se = [s.replace("_se0.25", "") for s in base.block_strings]
    variants = {
        "b0 (published)": base,
        "without SE": custom_config(no_se, name="b0-no-se"),
        "ReLU for swish": custom_config(list(base.block_strings), name="b0-relu", activation="relu"),
        "no stochastic depth": custom_config(list(base.block_strings), name="b0-no-sd", drop_connect_rate=0.0),
    }
    size = base.resolution if args.sizes == ["32", "native"] else (
        base.resolution if args.sizes[0] == "native" else int(args.sizes[0]))
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (args.batch_size, size, size, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, 1000, args.batch_size).astype("int32"))
    print(f"machine: {common.machine()}")
    keras.backend.clear_session()
    steps = {}
    for label, config in variants.items():
        model = build_efficientnet(config, input_shape=(size, size, 3), classifier_activation=None)
        steps[label] = train_step(model, args.xla == ["on"])
        steps[label](images, labels).numpy()
        steps[label](images, labels).numpy()
    rates = common.interleaved({k: (lambda s=s: s(images, labels).numpy()) for k, s in steps.items()},
                               args.steps, args.rounds, args.batch_size)
    full = 1.0 / rates["b0 (published)"]
    print(f"B0 train step at {size}px, batch {args.batch_size}, XLA {'on' if args.xla == ['on'] else 'off'}")
    print(f"{'variant':<22} {'img/s':>8} {'share of step time':>19}")
    for label, rate in rates.items():
        share = "" if label == "b0 (published)" else f"{100 * (full - 1.0 / rate) / full:>18.1f}%"
        print(f"{label:<22} {rate:>8.1f} {share:>19}")
    activation_implementations(args.batch_size, size)
    return 0


def activation_implementations(batch_size: int, size: int) -> None:
    """Swish forward+backward on B0's largest expanded activation (stride 2, 96 channels): is
    there a faster implementation of the same math than the one Keras uses?"""
    import keras
    import tensorflow as tf

    x = tf.random.normal((batch_size, size // 2, size // 2, 96))
    variants = {"keras swish (used)": keras.activations.swish, "tf.nn.silu": tf.nn.silu,
                "x * sigmoid(x)": lambda v: v * tf.sigmoid(v), "relu (other math)": tf.nn.relu}
    steps = {}
    for label, fn in variants.items():
        def step(v, fn=fn):
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = fn(v)
                total = tf.reduce_sum(y * y)
            return tape.gradient(total, v)

        steps[label] = tf.function(step, autograph=False)
        steps[label](x).numpy()
    rates = common.interleaved({k: (lambda s=s: s(x).numpy()) for k, s in steps.items()}, 5, 3, 1)
    print(f"swish implementations, forward+backward on {tuple(x.shape)}:")
    for label, rate in rates.items():
        print(f"{label:<22} {1e3 / rate:>8.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
