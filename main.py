"""Command line for efficientnet_tf. Flags are parsed here only; the package is a library.

    python main.py --model=efficientnet-b0 --dataset=cifar10          # train and evaluate
    python main.py --model=efficientnet-b0 --dataset=digits --epochs=15   # offline demo
    python main.py --flagfile=flags/cifar10_transfer.cfg
    python main.py --mode=summary --model=all
    python main.py --mode=plot --model_dir=runs/efficientnet-b0-digits
    python main.py --mode=export --model_dir=runs/efficientnet-b0-digits --tflite=float32,int8
    python main.py --mode=predict --model_dir=runs/efficientnet-b0-digits --image=a.png b.png
    python main.py --mode=predict --model=efficientnet-b0 --weights=imagenet --image=cat.jpg
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

from absl import app, flags

FLAGS = flags.FLAGS
MODES = ("train_and_eval", "train", "eval", "predict", "export", "plot", "summary")
TFLITE_FORMATS = ("float32", "float16", "dynamic", "int8", "int16x8")

flags.DEFINE_enum("mode", "train_and_eval", MODES, "train_and_eval: train, validating every epoch, then a final "
                  "eval report and plots; train: no validation; eval: evaluate the last checkpoint; predict: top-5 "
                  "for --image files; export: SavedModel + TFLite; plot: redraw a run's plots; summary: params/MACs.")
flags.DEFINE_string("model", "efficientnet-b0", "Model name (python main.py --mode=summary --model=all lists them).")
flags.DEFINE_string("dataset", "digits", "TFDS name (cifar10, oxford_flowers102, imagenet2012, ...), "
                    "folder:PATH, digits (offline) or synthetic.")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_string("model_dir", None, "Where checkpoints, history.csv, logs and plots go "
                    "(default runs/MODEL-DATASET). Rerunning the same command resumes.")
flags.DEFINE_integer("epochs", 350, "Training epochs (the papers' ImageNet run: 350).")
flags.DEFINE_integer("batch_size", 64, "Global batch size, split over the replicas.")
flags.DEFINE_integer("image_size", None, "Evaluation and export size; default: the model's resolution, 32 for "
                     "datasets of images under 64 px (CIFAR, digits).")
flags.DEFINE_integer("train_image_size", None, "Training size; default: EfficientNetV2's own training size (S: 300, "
                     "evaluated at 384) up to --image_size, else --image_size; datasets of images under 64 px train "
                     "at --image_size. Progressive learning ends at it.")
flags.DEFINE_enum("optimizer", "rmsprop", ["rmsprop", "sgd", "adamw"], "Optimizer (papers: RMSprop 0.9/0.9/1e-3).")
flags.DEFINE_float("learning_rate", 0.016, "Learning rate per 256 images, scaled linearly with batch_size.")
flags.DEFINE_enum("lr_schedule", "exponential", ["exponential", "cosine", "constant"], "LR after warmup.")
flags.DEFINE_float("warmup_epochs", None, "Linear LR warmup epochs; default: the papers' 5 of 350 epochs, "
                   "scaled to --epochs (1.4% of the run).")
flags.DEFINE_float("lr_decay_rate", 0.97, "Exponential schedule: factor per decay period.")
flags.DEFINE_float("lr_decay_epochs", None, "Exponential schedule: epochs per decay period (staircase); default: "
                   "the papers' 2.4 of 350 epochs, scaled to --epochs (ends at 1.2% of the peak LR).")
flags.DEFINE_float("weight_decay", 1e-5, "L2 weight decay (not on BN or biases); decoupled for adamw.")
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing.")
flags.DEFINE_float("dropout_rate", None, "Dropout before the classifier; default: the variant's.")
flags.DEFINE_float("drop_connect_rate", None, "Stochastic depth rate of the last block; default 0.2.")
flags.DEFINE_float("bn_momentum", None, "BN moving-average momentum; default: the variant's, lowered when an "
                   "epoch is too short for it (see README).")
flags.DEFINE_float("ema_decay", 0.9999, "EMA of weights used for eval and export; 0 turns it off.")
flags.DEFINE_integer("randaug_layers", 0, "RandAugment ops per image (0: off).")
flags.DEFINE_float("randaug_magnitude", 0.0, "RandAugment magnitude (tensorflow/tpu scale, 10 = strongest).")
flags.DEFINE_float("mixup_alpha", 0.0, "MixUp alpha (0: off).")
flags.DEFINE_float("cutmix_alpha", 0.0, "CutMix alpha (0: off).")
flags.DEFINE_boolean("mixed_precision", False, "bfloat16 on TPU/CPU, float16 with loss scaling on GPU.")
flags.DEFINE_enum("strategy", "auto", ["auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu"],
                  "auto: TPU if --tpu, multi-worker if TF_CONFIG names several workers, mirrored on several GPUs.")
flags.DEFINE_string("tpu", None, "TPU name or grpc:// address (TPUClusterResolver).")
flags.DEFINE_string("weights", None, "Pretrained initialisation: 'imagenet' or a weights file.")
flags.DEFINE_boolean("freeze_backbone", False, "Train only the new head (BN layers in inference mode).")
flags.DEFINE_integer("finetune_epochs", 0, "With --freeze_backbone: last epochs with everything unfrozen.")
flags.DEFINE_float("finetune_lr_scale", 0.1, "LR factor for the unfrozen fine-tuning epochs.")
flags.DEFINE_integer("progressive", 0, "Progressive learning stages (EfficientNetV2); 0 or 1: off.")
flags.DEFINE_integer("progressive_min_size", 128, "Progressive: first stage image size.")
flags.DEFINE_integer("progressive_max_size", None, "Progressive: last stage image size (default: the training "
                     "size, see --train_image_size).")
flags.DEFINE_float("progressive_min_dropout", 0.1, "Progressive: first stage dropout.")
flags.DEFINE_float("progressive_max_dropout", None, "Progressive: last stage dropout (default dropout_rate).")
flags.DEFINE_float("progressive_min_randaug", 5.0, "Progressive: first stage RandAugment magnitude.")
flags.DEFINE_float("progressive_max_randaug", None, "Progressive: last stage magnitude (default randaug_magnitude).")
flags.DEFINE_float("progressive_min_mixup", 0.0, "Progressive: first stage mixup alpha.")
flags.DEFINE_float("progressive_max_mixup", None, "Progressive: last stage mixup alpha (default mixup_alpha).")
flags.DEFINE_integer("seed", 0, "Random seed (weights, data order, augmentation).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in model_dir/checkpoints.")
flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (quick runs).")
flags.DEFINE_integer("steps_per_loop", 1, "Train steps per compiled call (raise on TPU).")
flags.DEFINE_boolean("jit_compile", None, "XLA for the train step; default: on TPU only.")
flags.DEFINE_boolean("dry_run", False, "Print the resolved training config as JSON (schedule, train and eval image "
                     "sizes included) and stop (check a recipe).")
flags.DEFINE_string("export_dir", None, "export: destination (default MODEL_DIR/export); replaced atomically.")
flags.DEFINE_list("tflite", list(TFLITE_FORMATS), f"export: TFLite formats to write ({', '.join(TFLITE_FORMATS)}); "
                  "'none' for the SavedModel only.")
flags.DEFINE_integer("check_images", 2000, "export: eval images on which each TFLite model is compared with the "
                     "float model (0: the whole eval split).")
flags.DEFINE_enum("int8_io", "uint8", ["uint8", "int8"], "export: input/output type of the full-integer TFLite model.")
flags.DEFINE_string("saved_model", None, "predict: an exported SavedModel directory (instead of --model_dir).")
flags.DEFINE_multi_string("image", None, "predict: image file(s); more paths may follow as plain arguments.")
flags.DEFINE_boolean("skip_bad_images", False, "folder: datasets: leave out unreadable files (else: error).")
flags.DEFINE_float("validation_fraction", None, "Share of the training images held out (seeded) for evaluation when "
                   "the dataset has no evaluation split; default 0.1 (digits: 0.2).")
flags.DEFINE_string("label_key", "label", "TFDS datasets: the class-label feature to classify (e.g. smallnorb: "
                    "label_category).")
flags.DEFINE_enum("tf_log_level", None, ["0", "1", "2", "3"], "TensorFlow's C++ log level (TF_CPP_MIN_LOG_LEVEL): "
                  "0 shows everything, 1 hides INFO, 2 also WARNING, 3 also ERROR. Default: TF_CPP_MIN_LOG_LEVEL "
                  "when set, else 3 (a CPU machine's CUDA probing is logged as errors; real failures still raise).")

DEFAULT_TF_LOG_LEVEL = 3
# absl C++ log lines: severity letter, date, time, thread id, file:line]
_NATIVE_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
_NATIVE_PREINIT_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def train_config():
    from efficientnet_tf.trainer import TrainConfig

    return TrainConfig(
        model=FLAGS.model, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
        model_dir=FLAGS.model_dir or os.path.join("runs", f"{FLAGS.model}-{FLAGS.dataset.replace(':', '_').replace('/', '_')}"),
        epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, image_size=FLAGS.image_size, optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate, lr_schedule=FLAGS.lr_schedule, warmup_epochs=FLAGS.warmup_epochs,
        lr_decay_rate=FLAGS.lr_decay_rate, lr_decay_epochs=FLAGS.lr_decay_epochs, weight_decay=FLAGS.weight_decay,
        label_smoothing=FLAGS.label_smoothing, dropout_rate=FLAGS.dropout_rate, drop_connect_rate=FLAGS.drop_connect_rate,
        bn_momentum=FLAGS.bn_momentum, ema_decay=FLAGS.ema_decay, randaug_layers=FLAGS.randaug_layers,
        randaug_magnitude=FLAGS.randaug_magnitude, mixup_alpha=FLAGS.mixup_alpha, cutmix_alpha=FLAGS.cutmix_alpha,
        mixed_precision=FLAGS.mixed_precision, strategy=FLAGS.strategy, tpu=FLAGS.tpu, weights=FLAGS.weights,
        freeze_backbone=FLAGS.freeze_backbone, finetune_epochs=FLAGS.finetune_epochs,
        finetune_lr_scale=FLAGS.finetune_lr_scale, progressive_stages=FLAGS.progressive,
        progressive_min_size=FLAGS.progressive_min_size, progressive_max_size=FLAGS.progressive_max_size,
        progressive_min_dropout=FLAGS.progressive_min_dropout, progressive_max_dropout=FLAGS.progressive_max_dropout,
        progressive_min_randaug=FLAGS.progressive_min_randaug, progressive_max_randaug=FLAGS.progressive_max_randaug,
        progressive_min_mixup=FLAGS.progressive_min_mixup, progressive_max_mixup=FLAGS.progressive_max_mixup,
        seed=FLAGS.seed, keep_checkpoints=FLAGS.keep_checkpoints, steps_per_epoch=FLAGS.steps_per_epoch,
        steps_per_loop=FLAGS.steps_per_loop, jit_compile=FLAGS.jit_compile,
        on_bad_image="skip" if FLAGS.skip_bad_images else "error", train_image_size=FLAGS.train_image_size,
        validation_fraction=FLAGS.validation_fraction, label_key=FLAGS.label_key,
    )


def run_summary() -> None:
    from efficientnet_tf import list_models
    from efficientnet_tf.flops import model_summary

    names = list_models() if FLAGS.model == "all" else [FLAGS.model]
    print(f"{'model':<20} {'res':>5} {'params':>13} {'GMACs':>8}")
    for name in names:
        s = model_summary(name, FLAGS.image_size)
        print(f"{s['model']:<20} {s['resolution']:>5} {s['params']:>13,} {s['macs'] / 1e9:>8.3f}", flush=True)


def run_training(validate: bool) -> None:
    from efficientnet_tf.trainer import Trainer

    config = train_config()
    config.validate()  # bad values stop here, before any data or model is touched
    if FLAGS.dry_run:
        print(resolved_config_json(config))
        return
    Trainer(config).fit(validate=validate)


def resolved_config_json(config) -> str:
    """The config as JSON plus what its unset values resolve to (schedule, image sizes)."""
    import dataclasses
    import json

    from efficientnet_tf.configs import get_config
    from efficientnet_tf.trainer import plan_stages

    warmup, decay = config.schedule_epochs()
    train_size, eval_size = config.image_sizes(config.peek_native_size())
    dropout = get_config(config.model).dropout_rate if config.dropout_rate is None else config.dropout_rate
    stage_sizes = [stage.image_size for stage in plan_stages(config, train_size, dropout)]
    resolved = dict(resolved_warmup_epochs=warmup, resolved_lr_decay_epochs=decay,
                    resolved_train_image_size=stage_sizes[-1], resolved_image_size=eval_size,
                    resolved_stage_image_sizes=stage_sizes)
    return json.dumps(dict(dataclasses.asdict(config), **resolved), indent=2)


def run_eval() -> None:
    import json

    from efficientnet_tf.trainer import Trainer

    trainer = Trainer(train_config())
    if not trainer.restore_for_eval():
        raise FileNotFoundError(f"no checkpoint in {trainer.config.model_dir}/checkpoints: train first (--mode=train)")
    print(json.dumps(trainer.evaluate(), indent=2))


def run_plot() -> None:
    from efficientnet_tf.trainer import replot_run

    model_dir = _existing_model_dir()
    for path in replot_run(model_dir):
        print(path)


def run_export() -> None:
    from efficientnet_tf.export import export_run, format_report

    model_dir = _existing_model_dir()
    formats = [] if FLAGS.tflite in ([], ["none"]) else FLAGS.tflite
    unknown = [f for f in formats if f not in TFLITE_FORMATS]
    if unknown:
        raise ValueError(f"unknown --tflite format(s) {', '.join(unknown)}; choose from {', '.join(TFLITE_FORMATS)} or none")
    report = export_run(model_dir, FLAGS.export_dir, formats, integer_io=FLAGS.int8_io,
                        check_images=FLAGS.check_images or None)
    print(f"SavedModel: {os.path.join(report['export_dir'], 'saved_model')} "
          f"({report['saved_model_bytes'] / 1e6:.1f} MB, {'EMA' if report['ema'] else 'raw'} weights of {report['checkpoint']})")
    if formats:
        print(format_report(report["tflite"]))
    print(f"report: {os.path.join(report['export_dir'], 'export_report.json')}")


def run_predict(extra_images) -> None:
    from efficientnet_tf.predict import Predictor, format_predictions

    images = list(FLAGS.image or []) + list(extra_images)
    if not images:
        raise ValueError("predict needs --image=PATH (several allowed)")
    if FLAGS.saved_model:
        predictor = Predictor.from_saved_model(FLAGS.saved_model)
    elif FLAGS.model_dir:
        predictor = Predictor.from_run(_existing_model_dir())
    elif FLAGS.weights:
        predictor = Predictor.from_pretrained(FLAGS.model, FLAGS.weights)
    else:
        raise ValueError("predict needs --model_dir (a training run), --saved_model (an export) or "
                         "--weights=imagenet|PATH (with --model)")
    print(f"# {predictor.description}")
    print(format_predictions(images, predictor(images)))


def _existing_model_dir() -> str:
    model_dir = FLAGS.model_dir or train_config().model_dir
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model_dir {model_dir!r} does not exist: pass --model_dir of a training run")
    return model_dir


def tf_log_level(flag_value: str | None, environ=os.environ) -> int | None:
    """The TensorFlow C++ log level to use: the flag, else TF_CPP_MIN_LOG_LEVEL, else the default.
    None when the environment holds something other than 0-3 (TensorFlow's own reading applies)."""
    if flag_value is not None:
        return int(flag_value)
    value = environ.get("TF_CPP_MIN_LOG_LEVEL")
    if value is None:
        return DEFAULT_TF_LOG_LEVEL
    return int(value) if value.strip() in ("0", "1", "2", "3") else None


def import_tensorflow_quietly(level: int | None) -> None:
    """Import TensorFlow with its C++ log level at `level`, including its startup lines.

    TensorFlow 2.21 logs through absl C++ and writes the lines of its library loading (oneDNN
    notice, `cudart_stub`, once per shared library) to stderr before its log level takes effect,
    so TF_CPP_MIN_LOG_LEVEL alone does not hide them. Stderr is captured while TensorFlow
    loads and given back without the log lines below `level`; anything else (a Python warning,
    an import error's explanation) passes through.
    """
    if level is None or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(level)
    if level == 0:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not _below_level(line, level)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def _below_level(line: str, level: int) -> bool:
    if line.startswith(_NATIVE_PREINIT_NOTICE):
        return True
    match = _NATIVE_LOG_LINE.match(line)
    return bool(match) and "IWEF".index(match.group(1)) < level


def quiet_python_logging() -> None:
    """Library INFO lines (TF's checkpoint chatter, matplotlib's font cache) hidden unless the user
    asked for a verbosity: absl's handler would otherwise print them."""
    from absl import logging as absl_logging

    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("matplotlib").setLevel(logging.WARNING)


def main(argv) -> int:
    extra = argv[1:]
    if extra and FLAGS.mode != "predict":
        raise app.UsageError(f"unexpected arguments: {' '.join(extra)}")
    import_tensorflow_quietly(tf_log_level(FLAGS.tf_log_level))
    quiet_python_logging()

    from efficientnet_tf.trainer import TrainingDiverged

    try:
        if FLAGS.mode == "summary":
            run_summary()
        elif FLAGS.mode == "eval":
            run_eval()
        elif FLAGS.mode == "plot":
            run_plot()
        elif FLAGS.mode == "export":
            run_export()
        elif FLAGS.mode == "predict":
            run_predict(extra)
        else:
            run_training(validate=FLAGS.mode == "train_and_eval")
    except (ValueError, FileNotFoundError, OSError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main)
