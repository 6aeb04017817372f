"""Training and evaluation with a `strategy.run` loop: one code path for CPU, GPU, TPU and workers.

Keras' Model.fit fails under MultiWorkerMirroredStrategy (Keras 3.15), so the loop is ours: a
tf.function train step per stage (static shapes, optional XLA), EMA weights for evaluation and
export, checkpoints (`run_state`), history.csv and run.json (`run_record`), and resume. What is
learnt is the trainer's task (`training.tasks`: loss, metrics, evaluation, report); the extras
are parts called at named points: the int8-aware epochs (`int8_epochs`), stopping on signals
(`signals`), hooks such as the plots (`hooks`). Progress goes to stdout when `verbose`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time

import keras
import tensorflow as tf

from efficientnet_tf import files
from efficientnet_tf.advice import Arg, advised
from efficientnet_tf.data.pipeline import PipelineConfig, distributed_dataset, per_replica_batch_size
from efficientnet_tf.data.sources import Source
from efficientnet_tf.models.factory import build_model
from efficientnet_tf.models.scopes import dtype_policy, random_seed
from efficientnet_tf.training import distribute, run_record
from efficientnet_tf.training.config import TrainConfig
from efficientnet_tf.training.ema import WeightAverage
from efficientnet_tf.training.errors import TrainingDiverged
from efficientnet_tf.training.hooks import TrainingHook
from efficientnet_tf.training.int8_epochs import Int8AwareEpochs
from efficientnet_tf.training.optim import l2_loss, make_optimizer
from efficientnet_tf.training.plan import plan_run, with_batch_size
from efficientnet_tf.training.run_state import RunState
from efficientnet_tf.training.report import RunPlots
from efficientnet_tf.training.rundir import NotARunError, RunDir, check_same_classes
from efficientnet_tf.training.signals import StopSignals
from efficientnet_tf.training.step_lr import StepLR
from efficientnet_tf.training.stages import Stage, augmented_batch, stage_pipeline
from efficientnet_tf.training.tasks import Task, make_task
from efficientnet_tf.training.tasks.base import is_correct


class Trainer:
    """Builds everything for a TrainConfig; `fit()` trains (resuming), `evaluate()` reports.

    A model_dir that already holds a run is continued only with the same identity settings
    (`rundir.IDENTITY_SETTINGS`: model, data, sizes, batch, ...): anything else raises
    `RunMismatch` before any file is touched; `overwrite=True` sets the old run aside
    (`MODEL_DIR.replaced-N`) and starts afresh. Keras' global state is left as found: the model
    is built under the run's dtype policy and seed in scopes that restore both (the CLI seeds
    the whole process itself).

    Args:
        config: the run's settings.
        verbose: print progress (as Keras' fit does).
        strategy: a distribution strategy; default: the one `config.run.strategy` names.
        overwrite: set an existing run in model_dir aside and start afresh.
        eval_source: a `data.sources.Source` to evaluate the trained run on instead of its own
            dataset; it must have the run's classes in the same order. Such a Trainer evaluates
            and cannot `fit()`.
        task: what the run learns (`training.tasks`, made for this config); default: config.recognition.task's.
        hooks: `training.hooks.TrainingHook`s the chief calls at the end of each epoch and of
            `fit()`; default: the run's plots (`training.report.RunPlots`).
    """

    def __init__(self, config: TrainConfig, verbose: bool = True, strategy: tf.distribute.Strategy | None = None,
                 overwrite: bool = False, eval_source: Source | None = None, task: Task | None = None,
                 hooks: list[TrainingHook] | None = None):
        config.validate()
        self.verbose = verbose
        self.overwrite = overwrite
        self.run_dir = RunDir(config.model_dir)
        self.run_dir.check_can_hold_a_run(overwrite)  # before any data, model or file is touched
        self.previous_info = None
        if self.run_dir.exists() and not overwrite:
            self.run_dir.check_same_run(config)  # before any data, model or file is touched
            self.previous_info = self.run_dir.read_info()
        self.evaluates_only = eval_source is not None
        if self.previous_info is None and not self.evaluates_only:
            config.model.check_new_run()
        if eval_source is not None:
            if self.previous_info is None:
                raise NotARunError(f"eval_source evaluates a trained run: {config.model_dir} holds none (train first)")
            check_same_classes(eval_source, self.previous_info, config.data.dataset)
            # The run's own sizes: the other dataset's native size would resolve unset ones differently.
            config = config.replace(image_size=self.previous_info["image_size"],
                                    train_image_size=self.previous_info["train_image_size"])
        self.config = config
        self.strategy = strategy or distribute.make_strategy(config.run.strategy, config.run.tpu)
        self.replicas = self.strategy.num_replicas_in_sync
        if config.run.batch_size is not None:  # checked before any data is read
            per_replica_batch_size(config.run.batch_size, self.replicas)
        self.chief = distribute.is_chief(self.strategy)
        self.policy = distribute.mixed_precision_policy(self.strategy, config.run.mixed_precision)
        self.device = distribute.device_kind(self.strategy)
        self.jit_compile = config.run.jit_compile if config.run.jit_compile is not None else self.device == "tpu"

        self.source = eval_source or config.load_source()
        # Unset, the batch is the resumed run's own, else resolved from the dataset's size (plan.py).
        config = self.config = with_batch_size(config, self.source.num_train, resuming=self.previous_info is not None)
        per_replica_batch_size(config.run.batch_size, self.replicas)
        self.task = task or make_task(config)
        self.hooks = list(hooks) if hooks is not None else [RunPlots()]
        self.plan = plan_run(config, self.source.native_size, self.source.num_train or config.run.batch_size)
        # image_size: evaluation and export; train_image_size: training (V2: smaller).
        self.image_size = self.plan.image_size
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.bn_momentum = self.plan.bn_momentum
        self.dropout_rate = self.plan.dropout_rate
        self.stages = list(self.plan.stages)
        self.base_lr = self.plan.base_lr
        self.int8_aware = Int8AwareEpochs(config, self.base_lr)
        self.sync_bn = config.model.sync_batch_norm if config.model.sync_batch_norm is not None else self.replicas > 1

        variable_size = len({s.image_size for s in self.stages} | {self.image_size}) > 1
        with self.strategy.scope(), dtype_policy(self.policy), random_seed(config.run.seed):
            self.model = build_model(
                config.model.name,
                num_classes=self.source.num_classes,
                input_shape=(None, None, 3) if variable_size else (self.image_size, self.image_size, 3),
                weights=config.model.weights,
                dropout_rate=self.dropout_rate,
                drop_connect_rate=config.model.drop_connect_rate,
                bn_momentum=self.bn_momentum,
                classifier_activation=None,  # logits: float32 loss, softmax at export
                **self.task.head_arguments(),
            )
            self.task.attach(self.model, self.source.num_classes)
            if self.sync_bn:
                for layer in self.model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.synchronized = True
            self.lr = StepLR(config.make_schedule(self.base_lr, self.steps_per_epoch))
            self.optimizer = make_optimizer(
                config.optimizer.name, lambda: self.lr(self.optimizer_steps()),
                weight_decay=config.optimizer.weight_decay, loss_scale=self.policy == "mixed_float16")
            self.optimizer.build(self.model.trainable_variables + self.task.loss_variables())
            ema_decay = config.optimizer.ema_decay
            self.ema = WeightAverage(self.model.variables, ema_decay) if ema_decay > 0 else None
            self.state = RunState()
        if self.ema is not None:
            self.ema.reset()
        self.signals = StopSignals(self.strategy, distribute.worker_count(self.strategy) > 1, self.say)
        self.state.track(self.run_dir, self.strategy, self.chief, config.run.keep_checkpoints, overwrite,
                         model=self.model, optimizer=self.optimizer,
                         **({"ema": self.ema} if self.ema is not None else {}), **self.task.checkpointed())
        self._train_fns = {}

    # ------------------------------------------------------------------ plumbing

    def optimizer_steps(self):
        """The optimizer's step counter (the loss-scaling wrapper's inner one)."""
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        return inner.iterations

    def say(self, *args):
        """Print to the user: when verbose, on the chief."""
        if self.verbose and self.chief:
            print(*args, flush=True)

    def _pipeline(self, stage: Stage, training: bool) -> PipelineConfig:
        return stage_pipeline(self.config, stage, training, self.task.one_hot)

    def train_step_fn(self, stage: Stage, int8_aware: bool = False):
        """The per-replica step: forward, loss (float32), backward, update. XLA-compilable.
        `int8_aware`: forward through the int8-rounded activations (`quantization_aware`)."""
        variables = stage.variables(self.model) + self.task.loss_variables()
        task = self.task
        forward = self.int8_aware.model.rounded if int8_aware else task.loss_model
        weight_decay = self.config.optimizer.weight_decay if self.config.optimizer.name != "adamw" else 0.0
        global_batch = self.config.run.batch_size

        def step(images, labels):
            with tf.GradientTape() as tape:
                logits, predicted = task.forward(images, labels, training=True, model=forward)
                per_example = task.per_example_loss(labels, logits)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                loss += l2_loss(variables, weight_decay) / self.replicas
                scaled = self.optimizer.scale_loss(loss) if hasattr(self.optimizer, "scale_loss") else loss
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply(grads, variables)
            batch_loss = tf.reduce_sum(per_example) / global_batch
            return batch_loss, tf.reduce_sum(is_correct(labels, predicted))

        # No autograph: the step has no Python control flow on tensors, and converting the model's
        # whole call graph made a new process's first step 4-6 s slower (Lite0 at 32 px on CPU:
        # 14.9 s against 9.3-11.0 s).
        return tf.function(step, jit_compile=self.jit_compile, autograph=False)

    def _train_loop_fn(self, stage: Stage, int8_aware: bool = False):
        key = (stage.index, stage.image_size, stage.dropout_rate, stage.frozen, int8_aware)
        if key in self._train_fns:
            return self._train_fns[key]
        step = self.train_step_fn(stage, int8_aware)
        strategy = self.strategy
        ema = self.ema

        @tf.function
        def loop(iterator, steps):
            loss_sum, correct_sum = tf.constant(0.0), tf.constant(0.0)
            for _ in tf.range(steps):
                loss, correct = strategy.run(step, args=next(iterator))
                loss_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
                correct_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
                if ema is not None:
                    ema.update()
            return loss_sum, correct_sum

        self._train_fns[key] = loop
        return loop

    # ------------------------------------------------------------------ public

    def train_on_batch(self, images, labels, stage: Stage | None = None, int8_aware: bool = False) -> tuple[float, float]:
        """One step on one global batch, split over the replicas: (mean loss, correct count).
        `int8_aware`: through the int8 rounding, whose ranges the last quantization-aware epoch's
        start measured (or `enter_int8_aware`)."""
        stage = stage or self.stages[0]
        dist = self.strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((images, labels)))
        loss, correct = self._train_loop_fn(stage, int8_aware)(iter(dist), tf.constant(1))
        return float(loss), float(correct)

    def restore_for_eval(self) -> bool:
        """Load the newest checkpoint (for evaluation/export); False when there is none."""
        return self.state.restore() > 0

    def fit(self, validate: bool = True) -> dict | None:
        """Train all stages (resuming from the last checkpoint); with `validate`, evaluate every
        epoch and return the final eval report (also written to model_dir/eval_report.json)."""
        config = self.config
        if self.evaluates_only:
            raise ValueError(f"this Trainer reads {self.source.name}, not its run's dataset {config.data.dataset}: "
                             "it evaluates the run and cannot train it")
        if self.chief:
            if self.overwrite and files.exists(self.run_dir.path):
                moved = self.run_dir.set_aside()
                self.say(f"previous run in {self.run_dir.path} moved to {moved}")
                self.overwrite = False  # once: a second fit() continues this run
                self.state.renew_manager()  # the old one listed the old run's checkpoints
            files.makedirs(self.run_dir.path)
        start_epoch = self.state.restore()
        self.lr.schedule, lr_change = run_record.resumed_schedule_of(self)  # before run.json records it
        self._train_fns.clear()  # a step traced before (train_on_batch) holds the schedule it was traced with
        if self.chief:
            run_record.write_run_info(self, lr_change)
        self.task.begin_fit()
        history = [r for r in self.run_dir.read_history() if int(r["epoch"]) < start_epoch]
        if self.chief:
            self.run_dir.write_history(history)
        writer = tf.summary.create_file_writer(self.run_dir.logs) if self.chief else None
        self.say("\n".join(run_record.describe(self, start_epoch)))
        with self.signals.watching():
            for stage in self.stages:
                if stage.end_epoch <= start_epoch:
                    continue
                self._enter_stage(stage)
                for epoch in range(max(stage.first_epoch, start_epoch), stage.end_epoch):
                    row = self._train_epoch(stage, epoch, validate)
                    history.append(row)
                    self.state.save_epoch(epoch)  # every worker (collectives); the chief's is kept
                    if self.chief:
                        run_record.write_epoch(self.run_dir, history, row, writer)
                        for hook in self.hooks:
                            hook.on_epoch_end(self, row)
                    if self.signals.requested():
                        self.signals.stop(f"after epoch {epoch + 1}", self.state.latest)
        report, figures = self.task.final_report(self) if validate else (None, {})
        if self.chief:
            if report is not None:
                self.run_dir.write_eval_report(report, **figures)
                for line in self.task.report_lines(report, "EMA weights" if self.ema else "weights"):
                    self.say(line)
            written = [path for hook in self.hooks for path in hook.on_fit_end(self, figures)]
            if written and report is not None:
                self.say(f"plots: {', '.join(os.path.basename(p) for p in written)} in {self.run_dir.path}")
        self.state.remove_worker_copies()
        return report

    def augmented_batch(self, count: int = 32, stage: Stage | None = None):
        """(images, labels) exactly as the training pipeline feeds them (first stage by default)."""
        return augmented_batch(self.source, self._pipeline(stage or self.stages[0], True), count)

    def _enter_stage(self, stage: Stage) -> None:
        if len(self.stages) > 1:
            self.say(stage.summary(len(self.stages)))
        stage.set_layers(self.model)
        self.lr.scale.assign(stage.lr_scale)

    def _train_epoch(self, stage: Stage, epoch: int, validate: bool) -> dict:
        done = first = int(self.state.epoch_step.numpy())  # > 0: an interrupted epoch, continued
        # The same batches in the same order; a continued epoch starts after the ones already
        # trained on, skipped before they are decoded.
        dataset = distributed_dataset(self.strategy, self.source, self._pipeline(stage, True), training=True,
                                      epoch=epoch, repeat=True, skip_steps=first)
        iterator = iter(dataset)
        int8_aware = self.int8_aware.includes(epoch)
        if int8_aware:
            self.enter_int8_aware(stage, epoch, fresh=not first)
        self.lr.constant.assign(self.int8_aware.lr if int8_aware else 0.0)
        loop = self._train_loop_fn(stage, int8_aware)
        progress = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["loss", "accuracy", "images/s"],
                                       verbose=1 if (self.verbose and self.chief) else 0)
        self.say(f"Epoch {epoch + 1}/{self.config.run.epochs}")
        loss_sum, correct_sum = (float(value) for value in self.state.epoch_sums.numpy())
        if first:
            self.say(f"continuing epoch {epoch + 1} at step {first + 1} of {self.steps_per_epoch}")
        every = self.config.run.checkpoint_every_steps
        start = time.perf_counter()
        while done < self.steps_per_epoch:
            steps = min(self.config.run.steps_per_loop, self.steps_per_epoch - done)
            if every:
                steps = min(steps, every - done % every)  # a compiled loop ends on each checkpoint step
            loss, correct = loop(iterator, tf.constant(steps))
            loss_sum, correct_sum, done = loss_sum + float(loss), correct_sum + float(correct), done + steps
            if not math.isfinite(loss_sum):
                raise advised(
                    TrainingDiverged, f"loss became {loss_sum} at epoch {epoch + 1}, step {done}: training stopped; "
                    f"the last good checkpoint ({self.state.latest or 'none yet'}) is kept. Lower ",
                    Arg("learning_rate"), " or check the data")
            if self.signals.requested() and done < self.steps_per_epoch:
                self.state.save_within_epoch(epoch, done, loss_sum, correct_sum)
                self.signals.stop(f"at epoch {epoch + 1}, step {done} of {self.steps_per_epoch}", self.state.latest)
            if every and done % every == 0 and done < self.steps_per_epoch:
                self.state.save_within_epoch(epoch, done, loss_sum, correct_sum)
            seen = done * self.config.run.batch_size
            progress.update(done, [("loss", loss_sum / done), ("accuracy", correct_sum / seen),
                                   ("images/s", seen / (time.perf_counter() - start))])
        elapsed = time.perf_counter() - start
        self.state.epoch_finished()
        # Validation at the evaluation size, like the final report: what the exported model will see.
        validation = self.task.validate(self, last_epoch=epoch + 1 >= self.stages[-1].end_epoch) if validate else None
        row = {
            "epoch": epoch,
            "accuracy": round(correct_sum / (done * self.config.run.batch_size), 6),
            "loss": round(loss_sum / done, 6),
            **self.task.validation_columns(validation),
            "lr": self._last_step_lr(),
            "stage": stage.index,
            "image_size": stage.image_size,
            "dropout_rate": round(stage.dropout_rate, 4),
            "randaug_magnitude": round(stage.randaug_magnitude, 3),
            "mixup_alpha": round(stage.mixup_alpha, 4),
            "images_per_sec": round((done - first) * self.config.run.batch_size / elapsed, 1),
        }
        self.say(f"epoch {epoch + 1}: loss {row['loss']:.4f} accuracy {row['accuracy']:.4f} "
                 f"{self.task.epoch_summary(row)} lr {row['lr']:.3g} ({row['images_per_sec']:.0f} images/s)")
        return row

    def enter_int8_aware(self, stage: Stage, epoch: int, fresh: bool) -> None:
        """Before a quantization-aware epoch (`int8_epochs.Int8AwareEpochs.enter`)."""
        self.int8_aware.enter(self, epoch, fresh)

    def _last_step_lr(self) -> float:
        """The LR the epoch's last optimizer step used (the counter already points past it)."""
        return float(self.lr(tf.maximum(self.optimizer_steps() - 1, 0)))

    def planned_lr(self, step: int) -> float:
        """The LR of global step `step` as planned: the schedule, then the quantization-aware
        epochs' constant (what lr_schedule.png draws)."""
        if step >= self.int8_aware.first_epoch * self.steps_per_epoch:
            return self.int8_aware.lr
        return float(self.lr.schedule(step))

    # ------------------------------------------------------------------ evaluation (the task's)

    def evaluate(self, image_size: int | None = None, split: str = "eval", **options) -> dict:
        """The task's metrics on `split` ('eval', or 'train': the training images, preprocessed
        for evaluation) at `image_size` (default: the run's evaluation size), with the EMA
        weights when the run keeps them. Classification: top-1/top-5/loss (`confusion=True`:
        also the confusion matrix); the embedding task: verification and retrieval on held-out
        identities (`curves=True`: also what its plots draw)."""
        return self.task.evaluate(self, image_size, split, **options)

    def eval_dataset(self, split: str = "eval", image_size: int | None = None) -> tf.data.Dataset:
        """`split` preprocessed for evaluation at `image_size`, distributed: full batches padded
        with zero-weight examples -- static shapes (TPU), the same number of steps on every
        worker (collectives), no empty replica batch, every example counted once."""
        stage = dataclasses.replace(self.stages[-1], image_size=image_size or self.image_size)
        return distributed_dataset(self.strategy, self.source, self._pipeline(stage, False), training=False,
                                   split=split)

    def evaluated_weights(self):
        """Within: the EMA weights in the model, when the run keeps them (`ema.WeightAverage.swapped`)."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    def embeddings(self, split: str = "eval", image_size: int | None = None):
        """An embedding run's embeddings of `split` and their labels (`tasks.EmbeddingTask.embeddings`)."""
        return self.task.embeddings(self, split, image_size)

    def evaluate_embeddings(self, image_size: int | None = None, split: str = "eval", curves: bool = False) -> dict:
        """An embedding run's `evaluate` (the same report; kept for 0.x callers)."""
        return self.task.evaluate(self, image_size, split, curves=curves)


def train(config: TrainConfig, verbose: bool = True) -> dict:
    """Train `config` (resuming its model_dir) and return the final evaluation report."""
    return Trainer(config, verbose=verbose).fit()
