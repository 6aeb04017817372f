"""Command line for efficientnet_tf. Flags are parsed here only; the package is a library.

    python main.py --model=efficientnet-b0 --dataset=cifar10          # train and evaluate
    python main.py --model=efficientnet-b0 --dataset=digits --epochs=15   # offline demo
    python main.py --flagfile=flags/cifar10_transfer.cfg
    python main.py --mode=summary --model=all
    python main.py --mode=plot --model_dir=runs/efficientnet-b0-digits
    python main.py --mode=export --model_dir=runs/efficientnet-b0-digits --tflite=float32,int8
    python main.py --mode=predict --model_dir=runs/efficientnet-b0-digits --image digit0.png digit1.png
    python main.py --mode=predict --model=efficientnet-b0 --weights=imagenet --image=china.jpg
    (README.md, "Prediction": the commands that write these images)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading

from absl import app, flags

DEFAULT_TF_LOG_LEVEL = 3
# absl C++ log lines: severity letter, date, time, thread id, file:line]
_NATIVE_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
_NATIVE_PREINIT_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


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
    so TF_CPP_MIN_LOG_LEVEL alone does not hide them. Stderr is filtered while TensorFlow
    loads: the log lines below `level` are dropped; anything else (a Python warning, an import
    error's explanation) passes through.
    """
    if level is None or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(level)
    if level == 0:
        import tensorflow  # noqa: F401
        return
    with filtered_stderr(lambda line: not _below_level(line, level)):
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def filtered_stderr(keep):
    """Pass the process's stderr (file descriptor 2: C++ writes there too) through `keep(line)`
    line by line as it is written, so a native crash still shows what came before it."""
    sys.stderr.flush()
    saved_fd = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def forward():
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if keep(line.decode(errors="replace")):
                    os.write(saved_fd, line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)  # closes the pipe's last write end: the thread reads to the end and stops
        thread.join()
        os.close(saved_fd)


CONVERTER_CHATTER = ("fully_quantize: ", "INFO: Created TensorFlow Lite XNNPACK delegate")


def _below_level(line: str, level: int) -> bool:
    if line.startswith(_NATIVE_PREINIT_NOTICE):
        return True
    match = _NATIVE_LOG_LINE.match(line)
    return bool(match) and "IWEF".index(match.group(1)) < level


def early_flag_value(argv, name: str) -> str | None:
    """The last `--name=value` or `--name value` of the command line (flagfiles expanded), before
    absl parses it; None when absent or when a flagfile cannot be read (absl reports that later)."""
    try:
        argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
    except Exception:  # noqa: BLE001  (a bad flagfile is absl's to report, with its own message)
        return None
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


if __name__ == "__main__":  # before the package below imports Keras, so TensorFlow's startup lines are filtered
    _early = early_flag_value(sys.argv[1:], "tf_log_level")
    import_tensorflow_quietly(tf_log_level(_early if _early in ("0", "1", "2", "3") else None))

from efficientnet_tf import files  # noqa: E402
from efficientnet_tf.deploy.config import TFLITE_FORMATS, ExportConfig  # noqa: E402
from efficientnet_tf.settings import SettingError, settings_of  # noqa: E402
from efficientnet_tf.training.config import TrainConfig  # noqa: E402

FLAGS = flags.FLAGS
MODES = ("train_and_eval", "train", "eval", "predict", "export", "plot", "summary")


def define_setting_flags(config_class) -> None:
    """One flag per setting of `config_class`: name, default, help and choices as declared there."""
    for setting in settings_of(config_class):
        help_text = setting.help
        if setting.kind is bool:
            flags.DEFINE_boolean(setting.name, setting.default, help_text)
        elif setting.kind is int:
            flags.DEFINE_integer(setting.name, setting.default, help_text)
        elif setting.kind is float:
            flags.DEFINE_float(setting.name, setting.default, help_text)
        elif setting.kind is tuple:
            if setting.choices:
                help_text = f"{help_text} Comma-separated, from: {', '.join(setting.choices)}."
            flags.DEFINE_list(setting.name, list(setting.default), help_text)
        else:
            # Choices are checked by the config (one error line, like every other bad value), not by absl.
            if setting.choices:
                help_text = f"{help_text} One of: {', '.join(setting.choices)}."
            flags.DEFINE_string(setting.name, setting.default, help_text)


def setting_values(config_class) -> dict:
    """The flag values of every setting of `config_class`, by flat name."""
    return {setting.name: FLAGS[setting.name].value for setting in settings_of(config_class)}


flags.DEFINE_enum("mode", "train_and_eval", MODES, "train_and_eval: train, validating every epoch, then a final "
                  "eval report and plots; train: no validation; eval: evaluate the last checkpoint; predict: top-5 "
                  "for --image files; export: SavedModel + TFLite; plot: redraw a run's plots; summary: params/MACs.")
define_setting_flags(TrainConfig)
define_setting_flags(ExportConfig)
flags.DEFINE_boolean("dry_run", False, "Print the resolved training config as JSON (schedule, train and eval image "
                     "sizes included) and stop (check a recipe).")
flags.DEFINE_string("saved_model", None, "predict: an exported SavedModel directory (instead of --model_dir).")
flags.DEFINE_multi_string("image", None, "predict: image file(s); more paths may follow as plain arguments.")
flags.DEFINE_boolean("overwrite", False, "train: when --model_dir holds a run with other settings, move it aside "
                     "(to MODEL_DIR.replaced-N, nothing is deleted) and start afresh.")
flags.DEFINE_enum("eval_split", "eval", ["eval", "train"], "eval: the split to evaluate: eval (the held-out or "
                  "validation images) or train (the training images, preprocessed as for evaluation).")
flags.DEFINE_boolean("skip_bad_images", False, "Same as --on_bad_image=skip (kept for older command lines).")
flags.DEFINE_enum("tf_log_level", None, ["0", "1", "2", "3"], "TensorFlow's C++ log level (TF_CPP_MIN_LOG_LEVEL): "
                  "0 shows everything, 1 hides INFO, 2 also WARNING, 3 also ERROR. Default: TF_CPP_MIN_LOG_LEVEL "
                  "when set, else 3 (a CPU machine's CUDA probing is logged as errors; real failures still raise).")


def train_config() -> TrainConfig:
    values = setting_values(TrainConfig)
    if FLAGS.skip_bad_images:
        values["on_bad_image"] = "skip"
    return TrainConfig.from_settings(**values)


def export_config() -> ExportConfig:
    values = setting_values(ExportConfig)
    formats = values.pop("tflite")
    if not formats:
        raise SettingError("tflite", "no format given: name TFLite formats (comma-separated: "
                           f"{', '.join(TFLITE_FORMATS)}) or none for the SavedModel only")
    if "none" in formats and len(formats) > 1:
        raise SettingError("tflite", "'none' (the SavedModel only) cannot be combined with TFLite formats")
    unknown = [name for name in formats if name not in TFLITE_FORMATS + ("none",)]
    if unknown:
        raise SettingError("tflite", f"unknown tflite {unknown[0]!r}; choose from {', '.join(TFLITE_FORMATS)}, "
                           "or none for the SavedModel only")
    config = ExportConfig(tflite=() if formats == ["none"] else tuple(formats), **values)
    if FLAGS["int8_target_agreement"].present and "int8_selective" not in config.tflite:
        config.validate()  # an out-of-range value is the first thing to say
        raise SettingError("int8_target_agreement", "int8_target_agreement is the agreement int8_selective searches "
                           "for, and the TFLite formats do not include int8_selective")
    if FLAGS["int8_selective_search"].present and "int8_selective" not in config.tflite:
        raise SettingError("int8_selective_search", "int8_selective_search says how int8_selective searches, and the "
                           "TFLite formats do not include int8_selective")
    return config


def seed_process(config: TrainConfig) -> None:
    """The CLI owns the process: one seed for Python, NumPy, TensorFlow and Keras."""
    import keras

    if config.run.seed is not None:
        keras.utils.set_random_seed(config.run.seed)


def run_summary() -> None:
    from efficientnet_tf.models.configs import list_models
    from efficientnet_tf.models.flops import model_summary

    names = list_models() if FLAGS.model == "all" else [FLAGS.model]
    print(f"{'model':<20} {'res':>5} {'params':>13} {'GMACs':>8}")
    for name in names:
        s = model_summary(name, FLAGS.image_size)
        print(f"{s['model']:<20} {s['resolution']:>5} {s['params']:>13,} {s['macs'] / 1e9:>8.3f}", flush=True)


def run_training(validate: bool) -> None:
    from efficientnet_tf.training.loop import Trainer

    from efficientnet_tf.training.rundir import RunDir

    config = train_config()  # bad values stop here, before any data or model is touched
    if RunDir(config.model_dir).exists() and not FLAGS.overwrite:
        # Continue the run there: its own settings, with the ones given here that may change.
        config = existing_run_config(config.model_dir, changeable=config.settings())
    else:
        config.model.check_new_run()
    if FLAGS.dry_run:
        print(resolved_config_json(config))
        return
    seed_process(config)
    Trainer(config, overwrite=FLAGS.overwrite).fit(validate=validate)


def resolved_config_json(config) -> str:
    """The config as JSON (flat names) plus every value it resolves to on its dataset (sizes per
    stage, steps per epoch, peak and final LR, warmup, BN momentum, dropout, policy, strategy)."""
    import json

    from efficientnet_tf.training import distribute
    from efficientnet_tf.training.plan import describe, plan_run

    native_size, num_train = config.peek_dataset()
    resolved = dict(describe(config, plan_run(config, native_size, num_train)), resolved_train_images=num_train)
    if num_train is None:
        resolved["resolved_note"] = (f"the size of {config.data.dataset} is not known here (not prepared, or not "
                                     "counted before training): steps per epoch, BN momentum and the LR at each step"
                                     + (", and the batch size (64 from 640 training images)" if
                                        config.run.batch_size is None else "") + " resolve when training starts")
    if config.run.strategy == "tpu" or config.run.tpu:
        resolved.update(resolved_strategy="tpu", resolved_replicas=None, resolved_policy=None)  # known once connected
    else:
        strategy = distribute.make_strategy(config.run.strategy, config.run.tpu)
        name = type(strategy).__name__
        resolved.update(resolved_strategy="default (one device)" if name.startswith("_Default") else name,
                        resolved_replicas=strategy.num_replicas_in_sync,
                        resolved_policy=distribute.mixed_precision_policy(strategy, config.run.mixed_precision))
    return json.dumps(dict(config.settings(), model_dir=config.model_dir, **resolved), indent=2)


def run_eval() -> None:
    import json

    from efficientnet_tf.training.loop import Trainer

    config = existing_run_config(evaluated_elsewhere=("eval_dataset",))
    seed_process(config)
    eval_source = None
    other = FLAGS.eval_dataset
    if other and config.recognition.embedding:
        raise ValueError(f"--eval_dataset={other}: an embedding run evaluates on its own held-out identities; "
                         "another dataset is for classification runs")
    folders = [os.path.realpath(os.path.expanduser(name[len("folder:"):])) for name in (other or "", config.data.dataset)
               if name.startswith("folder:")]
    own_folder = len(folders) == 2 and folders[0] == folders[1]  # folder:x and folder:./x/ are one folder
    if other and other != config.data.eval_dataset and not own_folder:
        # Read like the run's own data (data_dir, seed, held-out share); a TFDS label_key only for
        # TFDS; tfrecord files: all their records evaluate, labelled with the run's class names.
        # A folder the run never trained on evaluates whole (an eval folder inside it: that one);
        # the run's own folder is its held-out share, like no --eval_dataset.
        from efficientnet_tf.data.sources import folder_source, is_tfds_name
        from efficientnet_tf.training.rundir import RunDir

        try:
            if other.startswith("folder:"):
                eval_source = folder_source(other[len("folder:"):], on_bad_image=config.data.on_bad_image,
                                            evaluate_all=True)
            else:
                eval_source = config.replace(
                    dataset=other, label_key=config.data.label_key if is_tfds_name(other) else "label",
                    eval_dataset=other if other.startswith("tfrecord:") else None,
                ).load_source(class_names=RunDir(config.model_dir).read_info()["class_names"])
        except SettingError as err:  # it names --dataset, the run's setting: say which flag it was
            raise ValueError(f"--eval_dataset={other}: {err}") from None
    trainer = Trainer(config, eval_source=eval_source)
    if not trainer.restore_for_eval():
        raise FileNotFoundError(f"no checkpoint in {trainer.run_dir.checkpoints}: train first (--mode=train)")
    report = trainer.evaluate(split=FLAGS.eval_split)
    print(json.dumps(dict(report, dataset=trainer.source.name, split=FLAGS.eval_split), indent=2))


def run_plot() -> None:
    from efficientnet_tf.training.report import replot_run

    model_dir = existing_run_config().model_dir
    for path in replot_run(model_dir):
        print(path)


def run_export() -> int:
    from efficientnet_tf.deploy.export import export_run
    from efficientnet_tf.deploy.reports import format_report

    settings = export_config()
    settings.validate()
    # The TFLite quantizer prints its settings once per conversion (an int8_selective search
    # converts a dozen times) and LiteRT announces its CPU delegate: not for the user.
    with filtered_stderr(lambda line: not line.startswith(CONVERTER_CHATTER)):
        report = export_run(existing_run_config().model_dir, config=settings)
    print(f"SavedModel: {os.path.join(report['export_dir'], 'saved_model')} "
          f"({report['saved_model_bytes'] / 1e6:.1f} MB, {'EMA' if report['ema'] else 'raw'} weights of {report['checkpoint']})")
    compared = dict(report.get("tflite", {}), **({"onnx": report["onnx"]} if "onnx" in report else {}))
    if compared:
        print(format_report(compared))
    selective = report.get("int8_selective")
    if selective:
        from efficientnet_tf.deploy.int8_search import kept_float_summary

        measure = "nearest-neighbour agreement" if report.get("task") == "embedding" else "agreement"
        print(f"int8_selective: {kept_float_summary(selective)}, search {measure} {selective['search_agreement']:.4f} (target "
              f"{selective['target_agreement']}{'' if selective['target_met'] else ', NOT met: ' + selective['reason']})")
        if selective.get("head_search_skipped"):
            print(f"int8_selective: no dynamic-range head search: {selective['head_search_skipped']}")
    for line in kept_lines(report, settings):
        print(line)
    print(f"report: {os.path.join(report['export_dir'], 'export_report.json')}")
    if report.get("failed"):
        failures = "; ".join(f"{name} ({reason})" for name, reason in report["failed"].items())
        print(f"error: not exported: {failures}; everything else was written", file=sys.stderr)
        return 1
    return 0


def kept_lines(report: dict, settings) -> list[str]:
    """What an export kept from an earlier one and set aside, for the user: files of another
    checkpoint are a warning naming the flags that would bring them up to date."""
    lines = []
    older = report.get("kept_from_other_checkpoints", [])
    same = [name for name in report.get("kept", []) if name not in older]
    if same:
        lines.append(f"kept from an earlier export of the same checkpoint: {', '.join(same)}")
    if older:
        checkpoints = sorted({os.path.basename(report["files"][name]["checkpoint"]) for name in older})
        formats = list(settings.tflite) + [name[len("model_"):-len(".tflite")] for name in older
                                           if name.startswith("model_") and name.endswith(".tflite")]
        formats += ["int8"] if "int8_layer_errors.png" in older else []
        again = f"--tflite={','.join(dict.fromkeys(formats)) or 'none'}"
        again += " --onnx" if "model.onnx" in older or settings.onnx else ""
        lines.append(f"warning: kept from an earlier export of another checkpoint ({', '.join(checkpoints)}; this "
                     f"export is {os.path.basename(report['checkpoint'])}): {', '.join(older)}. To export them "
                     f"from this checkpoint too: {again}")
    lines += [f"in the way, kept under another name (not what the earlier export wrote): {name}"
              for name in report.get("moved_aside", [])]
    return lines


def run_predict(extra_images) -> None:
    from efficientnet_tf.deploy.predict import Predictor, format_predictions, read_image_bytes

    images = list(FLAGS.image or []) + list(extra_images)
    if not images:
        raise ValueError("predict needs --image=PATH (several allowed)")
    try:
        encoded = [read_image_bytes(path) for path in images]  # a bad image is named before the model loads
    except IsADirectoryError as err:
        hint = several_images_hint(err.path)
        raise IsADirectoryError(f"--image={err.path}: {err}. Several at once: {hint}") from None
    if FLAGS.saved_model:
        predictor = Predictor.from_saved_model(FLAGS.saved_model)
    elif FLAGS.model_dir:
        predictor = Predictor.from_run(existing_run_config().model_dir)
    elif FLAGS.weights:
        predictor = Predictor.from_pretrained(FLAGS.model, FLAGS.weights)
    else:
        from efficientnet_tf.models.official import list_weights

        raise ValueError("predict needs --model_dir (a training run), --saved_model (an export) or "
                         f"--weights=imagenet|FAMILY|PATH (with --model; {FLAGS.model} has "
                         f"{', '.join(list_weights(FLAGS.model)) or 'no pretrained weights'})")
    print(f"# {predictor.description}")
    print(format_predictions(images, predictor.predict_bytes(encoded)))


def several_images_hint(directory: str) -> str:
    """How this command line takes several files, with a pattern for `directory`'s images."""
    from efficientnet_tf.data.sources import IMAGE_EXTENSIONS

    found = sorted(os.path.splitext(name)[1] for name in os.listdir(directory)
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    pattern = os.path.join(directory, "*" + (found[0] if found else ".jpg"))
    return f"one --image followed by the paths, e.g. --image {pattern} (the shell lists the files)"


def existing_run_config(model_dir: str | None = None, changeable=None, evaluated_elsewhere=()) -> TrainConfig:
    """The config of the run in `model_dir` (default: --model_dir, which must exist), from its
    run.json, with the settings given on this command line applied. Given settings that
    contradict the run's identity are an error (`RunMismatch`), except those named in
    `evaluated_elsewhere` (the caller reads them itself); of the others, those named in
    `changeable` apply (default: only the ones about this process: data_dir, strategy, ...)."""
    from efficientnet_tf.training.rundir import IDENTITY_SETTINGS, RUNTIME_SETTINGS, RunMismatch, load_run
    from efficientnet_tf.training.rundir import setting_changes

    model_dir = model_dir or _existing_model_dir()
    stored, info = load_run(model_dir)
    given = train_config()
    present = {setting.name for setting in settings_of(TrainConfig) if FLAGS[setting.name].present}
    contradictions = [d for d in setting_changes(stored, given, IDENTITY_SETTINGS, info)
                      if d[0] in present and d[0] not in evaluated_elsewhere]
    if contradictions:
        raise RunMismatch(model_dir, contradictions)
    changeable = RUNTIME_SETTINGS if changeable is None else changeable
    applied = {name: value for name, value in given.settings().items()
               if name in present and name in changeable and name != "model_dir"}
    return stored.replace(**applied)


def run_mismatch_line(err) -> str:
    """A RunMismatch in this command line's terms: each differing flag, and the way out for this mode."""
    def spelled(name, value):
        return f"--{name} unset (its default)" if value is None else f"--{name}={value}"

    listed = "; ".join(f"the run has {spelled(name, stored)}, this command {spelled(name, given)}"
                       for name, stored, given in err.differences)
    if FLAGS.mode in ("train", "train_and_eval"):
        way_out = (f"use another --model_dir, or --overwrite to start over (the old run is kept as "
                   f"{err.model_dir}.replaced-N)")
    else:
        way_out = f"leave those flags out: --mode={FLAGS.mode} takes them from the run's run.json"
        if FLAGS.mode == "eval" and any(name == "dataset" for name, _, _ in err.differences):
            way_out += " (to evaluate another dataset with the same classes, name it with --eval_dataset)"
    return f"--model_dir={err.model_dir} holds another run: {listed}. To go on, {way_out}"


def _existing_model_dir() -> str:
    if not FLAGS.model_dir:
        raise FileNotFoundError(f"--mode={FLAGS.mode} needs --model_dir: the directory of a training run")
    if not files.isdir(FLAGS.model_dir):
        what = "is a file, not a directory" if files.exists(FLAGS.model_dir) else "does not exist"
        raise FileNotFoundError(f"model_dir {FLAGS.model_dir!r} {what}: pass --model_dir of a training run")
    return FLAGS.model_dir


def quiet_python_logging() -> None:
    """Library INFO lines (TF's checkpoint chatter, matplotlib's font cache) hidden unless the user
    asked for a verbosity: absl's handler would otherwise print them."""
    from absl import logging as absl_logging

    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("matplotlib").setLevel(logging.WARNING)


def flag_spelling(setting: str) -> str:
    """`--name=value` as given (or defaulted) on this command line; `--name` for a setting without a flag."""
    if setting not in FLAGS:
        return f"--{setting}"
    value = FLAGS[setting].value
    if value is True:  # a boolean flag given: its name says it
        return f"--{setting}"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f"--{setting}" if value is None else f"--{setting}={value}"


def interrupted_line(err: KeyboardInterrupt) -> str:
    """What Ctrl-C stopped, in this mode's terms (an export says what became of its directory)."""
    if str(err):
        return str(err)
    if FLAGS.mode in ("train", "train_and_eval"):
        return "stopped at once: the newest checkpoint on disk is kept; the same command resumes from it"
    return f"stopped (--mode={FLAGS.mode}); every file it writes is written whole, or not at all"


# What the command line runs for a library function an error message tells a Python caller to call.
LIBRARY_CALLS_AS_COMMANDS = {
    "efficientnet_tf.deploy.export.export_run": "`python main.py --mode=export --model_dir=RUN`",
}


def in_flags(err: BaseException) -> str:
    """The message of a library error in this command line's terms: the arguments it tells a
    Python caller to pass (`advice.Arg`) as flags, the functions to call as commands."""
    from efficientnet_tf.advice import Arg, worded

    def word(part):
        if not isinstance(part, Arg):
            return LIBRARY_CALLS_AS_COMMANDS.get(part.function)
        if part.name not in FLAGS:
            return None  # no flag of that name: the Python wording is the best there is
        if not part.has_value:
            return f"--{part.name}"
        return f"no --{part.name}" if part.value is None else f"--{part.name}={part.value}"

    return worded(err, word)


def main(argv) -> int:
    extra = argv[1:]
    if extra and FLAGS.mode != "predict":
        raise app.UsageError(f"unexpected arguments: {' '.join(extra)}")
    if FLAGS["eval_split"].present and FLAGS.mode != "eval":
        raise app.UsageError(f"--eval_split applies to --mode=eval, not --mode={FLAGS.mode}")
    import_tensorflow_quietly(tf_log_level(FLAGS.tf_log_level))
    quiet_python_logging()

    from efficientnet_tf.training.errors import TrainingDiverged, TrainingInterrupted, UnreadableCheckpoints
    from efficientnet_tf.training.rundir import RunMismatch

    try:
        if FLAGS.mode == "summary":
            run_summary()
        elif FLAGS.mode == "eval":
            run_eval()
        elif FLAGS.mode == "plot":
            run_plot()
        elif FLAGS.mode == "export":
            return run_export()
        elif FLAGS.mode == "predict":
            run_predict(extra)
        else:
            run_training(validate=FLAGS.mode == "train_and_eval")
    except TrainingInterrupted as err:
        print(err, file=sys.stderr)
        return 128 + err.signal_number  # the shell's convention for "killed by this signal"
    except KeyboardInterrupt as err:  # training: a second Ctrl-C (the first stops after the step)
        print(interrupted_line(err), file=sys.stderr)
        return 130
    except RunMismatch as err:
        print(f"error: {run_mismatch_line(err)}", file=sys.stderr)
        return 2
    except (SettingError, TrainingDiverged) as err:  # the library names the setting; say it as a flag
        print(f"error: {flag_spelling(err.setting)}: {in_flags(err)}", file=sys.stderr)
        return 2
    except (ValueError, OSError, UnreadableCheckpoints) as err:
        print(f"error: {in_flags(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main)
