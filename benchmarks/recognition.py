"""Recognition embeddings on held-out identities, and how their quantized exports keep them.

Trains EfficientNet embeddings on offline identity data with each loss/head pair: digits as
identities (trains on 0-6, holds out 7, 8, 9: `--task=embedding`'s digits default) or glyphs (129
characters drawn in matplotlib's fonts, a seeded 20% of the characters held out). Prints the
held-out verification and retrieval figures: leave-one-out 1-NN retrieval top-1, ROC AUC, TAR at
FAR 1e-3 and 1e-2, next to what the raw pixels give. Then exports the ArcFace runs to TFLite and
prints, per format, on every image the mean and minimum cosine similarity to the float embedding
and the share of images that keep their nearest neighbour, and the held-out retrieval top-1
against the float model's.

    python benchmarks/recognition.py                       # digits, B0 at 32 px, 3 runs + 2 exports: ~20 min on 2 cores
    python benchmarks/recognition.py --dataset glyphs --formats    # many identities; no exports
    python benchmarks/recognition.py --dataset glyphs --epochs 100 --margin 0.2 --margin_scale 16 \
        --runs arcface:gap arcface:flatten --export arcface:gap       # README's glyph figures: ~35 min alone
    python benchmarks/recognition.py --image_size 64 --runs arcface:flatten softmax:gap
    python benchmarks/recognition.py --runs arcface:gap --export arcface:gap --formats int8 \
        --quantization_aware_epochs 3       # README's quantization-aware figures (digits)
    python benchmarks/recognition.py --dataset glyphs --epochs 100 --margin 0.2 --margin_scale 16 \
        --runs arcface:gap --export arcface:gap --formats int8 --quantization_aware_epochs 10   # README's 2nd glyph QAT table

With `--quantization_aware_epochs N`, each exported run is also continued for N more epochs twice,
from the same checkpoint and at the same constant LR (`--quantization_aware_lr_scale` x the peak;
0.1, the int8-aware epochs' default): once plainly (the control) and once quantization-aware
(`quantization_aware_epochs=N`), and both are exported too: what the int8-aware epochs do to the
int8 export, apart from what N more epochs do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import common  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)

RUNS = ["arcface:flatten", "arcface:gap", "softmax:gap"]
FORMATS = ["float16", "int8", "int8_selective", "int16x8"]
KEYS = ("retrieval_top1", "roc_auc", "tar_at_far_1e-3", "tar_at_far_1e-2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet-b0")
    parser.add_argument("--dataset", default="digits",
                        help="digits, glyphs or folder:PATH (one sub-folder per identity)")
    parser.add_argument("--runs", nargs="+", default=RUNS, help="LOSS:HEAD pairs (arcface, cosface, softmax; gap, flatten)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--embedding_dim", type=int, default=128)
    parser.add_argument("--margin_scale", type=float, default=30.0)
    parser.add_argument("--margin", type=float, help="arcface/cosface margin (default: the loss's own, 0.5 / 0.35)")
    parser.add_argument("--formats", nargs="*", default=FORMATS, help="TFLite formats of the exports")
    parser.add_argument("--export", nargs="*", default=["arcface:flatten", "arcface:gap"],
                        help="the LOSS:HEAD runs to export (of --runs)")
    parser.add_argument("--quantization_aware_epochs", type=int, default=0,
                        help="also continue each exported run N epochs plainly and N epochs int8-aware; export both")
    parser.add_argument("--quantization_aware_lr_scale", type=float, default=0.1,
                        help="the continued epochs' constant LR, a factor of the peak")
    parser.add_argument("--keep", help="keep the runs under this directory (default: temporary)")
    args = parser.parse_args(argv)
    if args.quantization_aware_epochs < 0:
        parser.error(f"--quantization_aware_epochs must be >= 0, got {args.quantization_aware_epochs}")
    if args.quantization_aware_lr_scale <= 0:
        parser.error(f"--quantization_aware_lr_scale must be > 0, got {args.quantization_aware_lr_scale}")

    import keras

    from efficientnet_tf.training.margin import DEFAULT_MARGINS, check_margin

    try:  # one line for a bad value, before any training
        check_margin("arcface", DEFAULT_MARGINS["arcface"] if args.margin is None else args.margin, args.margin_scale)
    except ValueError as err:
        parser.error(str(err))

    from efficientnet_tf.deploy.export import export_run
    from efficientnet_tf.deploy.reports import format_report
    from efficientnet_tf.training import TrainConfig, Trainer

    print(f"machine: {common.machine()}")
    from efficientnet_tf.data.identities import identity_source

    source = identity_source(args.dataset)  # the split every run below trains and evaluates on (seed 0)
    print(f"{args.model} at {args.image_size} px, {args.epochs} epochs, {args.embedding_dim}-d, {args.dataset}: "
          f"{source.split_description}")
    label = 28 if args.quantization_aware_epochs else 18  # "arcface:gap +3 int8-aware"
    print(f"{'loss:head':<{label}}" + "".join(f"{key:>17}" for key in KEYS))
    if args.dataset in ("digits", "glyphs"):
        # What no training gives: the held-out identities' raw pixels as the embedding.
        from efficientnet_tf.training.verification import verification_report

        pixels, labels = (t.numpy() for t in next(iter(source.examples("eval").batch(source.num_eval))))
        raw = verification_report(pixels.reshape(len(pixels), -1).astype("float32"), labels, seed=0)
        print(f"{'raw pixels':<{label}}" + "".join(f"{raw[key]:>17.4f}" for key in KEYS), flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        for pair in args.runs:
            loss, head = pair.split(":")
            keras.backend.clear_session()
            model_dir = os.path.join(root, f"{loss}-{head}")
            # The digits demo recipe (flags/digits_demo.cfg), as the quantization benchmark trains.
            config = TrainConfig.from_settings(
                task="embedding", loss=loss, embedding_head=head, embedding_dim=args.embedding_dim,
                margin_scale=args.margin_scale, margin=None if loss == "softmax" else args.margin, model=args.model,
                dataset=args.dataset, image_size=args.image_size,
                model_dir=model_dir, epochs=args.epochs, batch_size=64, learning_rate=0.008, lr_schedule="cosine",
                warmup_epochs=1, seed=0)
            report = Trainer(config, verbose=False).fit()
            runs.append((pair, model_dir))
            print(f"{pair:<{label}}" + "".join(f"{report[key]:>17.4f}" for key in KEYS), flush=True)
            extra = args.quantization_aware_epochs
            if extra and pair in args.export:
                longer = dict(epochs=args.epochs + extra, quantization_aware_lr_scale=args.quantization_aware_lr_scale)
                # The control trains at the int8-aware epochs' constant LR (a factor of the peak) too.
                plain = dict(longer, lr_schedule="constant", warmup_epochs=0,
                             learning_rate=config.optimizer.learning_rate * args.quantization_aware_lr_scale)
                for name, settings in (("plain", plain), ("int8-aware", dict(longer, quantization_aware_epochs=extra))):
                    keras.backend.clear_session()
                    continued = f"{model_dir}+{extra}-{name}"
                    shutil.copytree(model_dir, continued)
                    report = Trainer(config.replace(model_dir=continued, **settings), verbose=False).fit()
                    runs.append((f"{pair} +{extra} {name}", continued))
                    print(f"{runs[-1][0]:<{label}}" + "".join(f"{report[key]:>17.4f}" for key in KEYS), flush=True)
        for pair, model_dir in runs:
            if not args.formats or pair.split(" ")[0] not in args.export:
                continue
            keras.backend.clear_session()
            export = export_run(model_dir, tflite=args.formats, check_images=0)
            print(f"\n{pair} exported (cosine to the float embedding on every image; retrieval on the held-out "
                  "identities):")
            print(format_report(export["tflite"]))
            if "int8_selective" in export:
                selective = export["int8_selective"]
                print(f"int8_selective: {selective['float_ops']} of {selective['float_ops'] + selective['quantized_ops']} "
                      f"ops float, search neighbour agreement {selective['search_agreement']:.4f} "
                      f"(target {selective['target_agreement']})")
            for name, reason in export.get("failed", {}).items():
                print(f"{name}: failed: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
