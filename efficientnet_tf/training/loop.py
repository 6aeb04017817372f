"""Training and evaluation with a `strategy.run` loop: one code path for CPU, GPU, TPU and workers.

Keras' Model.fit fails under MultiWorkerMirroredStrategy (Keras 3.15), so the loop is ours:
a tf.function train step per stage (static shapes, optional XLA), EMA of the weights for
evaluation and export, a checkpoint every epoch, `history.csv`, TensorBoard logs, and resume.
Progress goes to stdout when `verbose` (like Keras' fit); warnings go to `logging`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf import files
from efficientnet_tf.advice import Arg, advised
from efficientnet_tf.data.pipeline import CALIBRATION_IMAGES, PipelineConfig, distributed_dataset, per_replica_batch_size
from efficientnet_tf.data.sources import Source
from efficientnet_tf.models.builder import build_model
from efficientnet_tf.models.scopes import dtype_policy, random_seed
from efficientnet_tf.training import distribute, verification
from efficientnet_tf.training.config import TrainConfig
from efficientnet_tf.training.ema import WeightAverage
from efficientnet_tf.training.margin import ClassCentres, sparse_smoothed_cross_entropy
from efficientnet_tf.training.optim import l2_loss, make_optimizer
from efficientnet_tf.training.checkpoints import remove_checkpoints, repair_state_file, restore_newest_readable
from efficientnet_tf.training.errors import TrainingDiverged, TrainingInterrupted
from efficientnet_tf.training.rundir import NotARunError, RunDir, check_same_classes, load_run, recorded_changes, run_info
from efficientnet_tf.training.plan import plan_run, with_batch_size
from efficientnet_tf.training.quantization_aware import Int8AwareModel
from efficientnet_tf.training.resume_lr import change_line, resumed_schedule
from efficientnet_tf.training.stages import Stage, augmented_batch, stage_pipeline

log = logging.getLogger(__name__)
HEAD_LAYERS = ("predictions", "top_dropout", "avg_pool", "embedding_feature_bn", "embedding_flatten", "embedding",
               "embedding_bn", "embedding_l2")


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
    """

    def __init__(self, config: TrainConfig, verbose: bool = True, strategy: tf.distribute.Strategy | None = None,
                 overwrite: bool = False, eval_source: Source | None = None):
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
        network = config.model
        self.plan = plan_run(config, self.source.native_size, self.source.num_train or config.run.batch_size)
        # image_size: evaluation and export; train_image_size: training (V2: smaller).
        self.image_size = self.plan.image_size
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.bn_momentum = self.plan.bn_momentum
        self.dropout_rate = self.plan.dropout_rate
        self.stages = list(self.plan.stages)
        self.base_lr = self.plan.base_lr
        recognition = config.recognition
        self.embedding = recognition.embedding
        # The embedding task keeps class ids (its loss smooths labels without a one-hot).
        self.one_hot = not self.embedding and (
            config.optimizer.label_smoothing > 0 or config.augment.mixes_labels or (
                config.progressive.stages > 1 and (config.progressive.max_mixup or 0) > 0))
        self.sync_bn = network.sync_batch_norm if network.sync_batch_norm is not None else self.replicas > 1

        variable_size = len({s.image_size for s in self.stages} | {self.image_size}) > 1
        with self.strategy.scope(), dtype_policy(self.policy), random_seed(config.run.seed):
            head = (dict(include_top=False, embedding_dim=recognition.embedding_dim,
                         embedding_head=recognition.embedding_head) if self.embedding else {})
            self.model = build_model(
                config.model.name,
                num_classes=self.source.num_classes,
                input_shape=(None, None, 3) if variable_size else (self.image_size, self.image_size, 3),
                weights=config.model.weights,
                dropout_rate=self.dropout_rate,
                drop_connect_rate=config.model.drop_connect_rate,
                bn_momentum=self.bn_momentum,
                classifier_activation=None,  # logits: float32 loss, softmax at export
                **head,
            )
            # The embedding task's class centres belong to the loss: trained and checkpointed
            # with the run, never part of the exported model.
            self.centres = None
            # The softmax baseline classifies the embedding before its unit normalization: on unit
            # vectors a classifier's logits are bounded by its weights' norms and barely learn.
            # (ArcFace and CosFace compare directions: the unit embedding.) Same layers and variables.
            self.loss_model = self.model
            if self.embedding and recognition.loss == "softmax":
                self.loss_model = keras.Model(self.model.inputs, self.model.get_layer("embedding_l2").input)
            if self.embedding:
                self.centres = ClassCentres(self.source.num_classes, recognition.loss, recognition.margin,
                                            recognition.margin_scale, name="class_centres")
                self.centres.build((None, recognition.embedding_dim))
            if self.sync_bn:
                for layer in self.model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.synchronized = True
            self.schedule = config.make_schedule(self.base_lr, self.steps_per_epoch)
            self.lr_scale = tf.Variable(1.0, trainable=False, name="lr_scale")
            # > 0: the LR of every step instead of the schedule's (the quantization-aware epochs).
            self.lr_constant = tf.Variable(0.0, trainable=False, name="lr_constant")
            self.optimizer = make_optimizer(
                config.optimizer.name, lambda: self._lr_at(self._optimizer_steps()),
                weight_decay=config.optimizer.weight_decay, loss_scale=self.policy == "mixed_float16")
            self.optimizer.build(self.model.trainable_variables + self._loss_variables())
            ema_decay = config.optimizer.ema_decay
            self.ema = WeightAverage(self.model.variables, ema_decay) if ema_decay > 0 else None
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            # Where an interrupted epoch stopped (0: at its start) and its running loss/correct sums,
            # so that a resumed epoch continues at the next batch and its history row covers it all.
            self.epoch_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_step")
            self.epoch_sums = tf.Variable([0.0, 0.0], dtype=tf.float64, trainable=False, name="epoch_sums")
        if self.ema is not None:
            self.ema.reset()
        self._stop_signal = None  # set by SIGINT/SIGTERM during fit()
        self._several_workers = distribute.worker_count(self.strategy) > 1
        self._stop_vote = None  # a tf.function: the workers' sum of "I was signalled"
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, epoch=self.epoch,
                                              epoch_step=self.epoch_step, epoch_sums=self.epoch_sums,
                                              **({"ema": self.ema} if self.ema is not None else {}),
                                              **({"centres": self.centres} if self.centres is not None else {}))
        self.checkpoint_dir = self._checkpoint_dir()
        if self.chief and not overwrite:
            repair_state_file(self.checkpoint_dir)  # a garbage state file would stop the manager
        self.manager = self._new_manager()
        self._train_fns = {}
        self._eval_fns = {}
        self._int8_aware = None  # an Int8AwareModel, built at the first quantization-aware epoch
        self._last_epoch_evaluation = None  # the run's last epoch's validation, with its confusion matrix

    # ------------------------------------------------------------------ plumbing

    def _optimizer_steps(self):
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        return inner.iterations

    def _new_manager(self) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(self.checkpoint, self.checkpoint_dir,
                                          max_to_keep=self.config.run.keep_checkpoints)

    def _checkpoint_dir(self) -> str:
        if self.chief:
            return self.run_dir.checkpoints
        # Other workers must save too (collective ops), but somewhere they can throw away.
        resolver = self.strategy.cluster_resolver
        return self.run_dir.worker_checkpoints(resolver.task_type, resolver.task_id)

    def _print(self, *args):
        if self.verbose and self.chief:
            print(*args, flush=True)

    def _pipeline(self, stage: Stage, training: bool) -> PipelineConfig:
        return stage_pipeline(self.config, stage, training, self.one_hot)

    def _loss_variables(self) -> list:
        return list(self.centres.trainable_variables) if self.centres is not None else []

    def _trainable_variables(self, stage: Stage):
        if not stage.frozen:
            return self.model.trainable_variables + self._loss_variables()
        return [v for layer in self.model.layers if layer.name in HEAD_LAYERS
                for v in layer.trainable_variables] + self._loss_variables()

    def _set_frozen(self, frozen: bool) -> None:
        for layer in self.model.layers:
            if layer.name not in HEAD_LAYERS and layer.weights:
                layer.trainable = not frozen  # frozen BN layers run in inference mode (Keras 3)

    def _logits(self, images, labels, training: bool, model: keras.Model | None = None):
        """(logits the loss takes, logits whose argmax is the prediction); `model`: the loss
        model's forward pass (default: `loss_model`)."""
        outputs = (model or self.loss_model)(images, training=training)
        if self.centres is None:
            return outputs, outputs
        return self.centres(outputs, labels)

    def _loss(self, labels, logits):
        logits = tf.cast(logits, tf.float32)
        if self.embedding:
            return sparse_smoothed_cross_entropy(labels, logits, self.config.optimizer.label_smoothing)
        if self.one_hot:
            per_example = keras.losses.categorical_crossentropy(
                labels, logits, from_logits=True, label_smoothing=self.config.optimizer.label_smoothing)
        else:
            per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return per_example

    @staticmethod
    def _sparse_labels(labels):
        """Class ids from sparse or (smoothed / mixed) one-hot labels."""
        return tf.argmax(labels, axis=-1, output_type=tf.int32) if labels.shape.rank == 2 else tf.cast(labels, tf.int32)

    def _correct(self, labels, logits):
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.cast(tf.equal(predicted, self._sparse_labels(labels)), tf.float32)

    def train_step_fn(self, stage: Stage, int8_aware: bool = False):
        """The per-replica step: forward, loss (float32), backward, update. XLA-compilable.
        `int8_aware`: forward through the int8-rounded activations (`quantization_aware`)."""
        variables = self._trainable_variables(stage)
        forward = self._int8_aware.rounded if int8_aware else self.loss_model
        weight_decay = self.config.optimizer.weight_decay if self.config.optimizer.name != "adamw" else 0.0
        global_batch = self.config.run.batch_size

        def step(images, labels):
            with tf.GradientTape() as tape:
                logits, predicted = self._logits(images, labels, training=True, model=forward)
                per_example = self._loss(labels, logits)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                loss += l2_loss(variables, weight_decay) / self.replicas
                scaled = self.optimizer.scale_loss(loss) if hasattr(self.optimizer, "scale_loss") else loss
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply(grads, variables)
            batch_loss = tf.reduce_sum(per_example) / global_batch
            return batch_loss, tf.reduce_sum(self._correct(labels, predicted))

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
        return self._restore() > 0

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
                self._print(f"previous run in {self.run_dir.path} moved to {moved}")
                self.overwrite = False  # once: a second fit() continues this run
                self.manager = self._new_manager()  # the old one listed the old run's checkpoints
            files.makedirs(self.run_dir.path)
        start_epoch = self._restore()
        self._resume_schedule()  # where the checkpoint left the LR: before run.json records it
        if self.chief:
            self._write_run_info()
        self._last_epoch_evaluation = None
        history = [r for r in self.run_dir.read_history() if int(r["epoch"]) < start_epoch]
        if self.chief:
            self.run_dir.write_history(history)
        writer = tf.summary.create_file_writer(self.run_dir.logs) if self.chief else None
        source = self.source
        self._print(f"{config.model.name} on {config.data.dataset}: {source.num_train} train / {source.num_eval} eval "
                    f"images, {source.num_classes} classes; {self.replicas} replica(s) on {self.device}, policy "
                    f"{self.policy}, batch {config.run.batch_size}, {self.steps_per_epoch} steps/epoch, BN momentum "
                    f"{self.bn_momentum:.3f}, XLA {'on' if self.jit_compile else 'off'}")
        split = getattr(self.source, "split_description", "")
        if split:
            self._print(f"data: {split}")
        self._print(f"image size: train {self.stages[-1].image_size}"
                    + (f" (stages {', '.join(str(s.image_size) for s in self.stages)})" if len(self.stages) > 1 else "")
                    + f", eval/export {self.image_size}")
        warmup, decay = config.schedule_epochs()
        optimizer = config.optimizer
        decay_text = f", x{optimizer.lr_decay_rate:g} every {decay:.3g} epochs"
        self._print(f"LR {self.base_lr:.3g} peak ({optimizer.learning_rate:g} per 256), {optimizer.lr_schedule} "
                    f"schedule, warmup {warmup:.3g} epochs" + (decay_text if optimizer.lr_schedule == "exponential" else ""))
        if start_epoch >= config.run.epochs:
            self._print(f"{self.resumed_from}: all {config.run.epochs} epochs are done (more epochs extend the run)")
        elif start_epoch:
            self._print(f"resuming from {self.resumed_from}: epoch {start_epoch + 1} of {config.run.epochs}")
        with self._stop_on_signals():
            for stage in self.stages:
                if stage.end_epoch <= start_epoch:
                    continue
                self._enter_stage(stage)
                for epoch in range(max(stage.first_epoch, start_epoch), stage.end_epoch):
                    row = self._train_epoch(stage, epoch, validate)
                    history.append(row)
                    self.epoch.assign(epoch + 1)
                    self._save_epoch(history, row, writer)
                    if self._stop_requested():
                        self._interrupted(f"after epoch {epoch + 1}")
        if not validate:
            if self.chief:
                self.save_plots()
            self._cleanup_worker_dir()
            return None
        if self.embedding:
            return self._final_embedding_report()
        # The last epoch validated the weights this report is of: its evaluation is the report
        # (one pass over the eval split less; a full ImageNet validation on a run's last epoch).
        report = self._last_epoch_evaluation or self.evaluate(confusion=True)
        confusion = report.pop("confusion_matrix")
        if self.chief:
            self.run_dir.write_eval_report(report, confusion)
            self._print(f"final eval ({'EMA weights' if self.ema else 'weights'}): top-1 {report['top1']:.4f}, "
                        f"top-5 {report['top5']:.4f}, loss {report['loss']:.4f}, {report['images_per_sec']:.1f} images/s")
            written = self.save_plots(confusion)
            if written:
                self._print(f"plots: {', '.join(os.path.basename(p) for p in written)} in {self.run_dir.path}")
        self._cleanup_worker_dir()
        return report

    def _final_embedding_report(self) -> dict:
        report = self.evaluate_embeddings(curves=True)
        curves = report.pop("curves")
        if self.chief:
            self.run_dir.write_eval_report(report, curves=curves)
            self._print(f"final eval on {report['identities']} held-out identities ({'EMA weights' if self.ema else 'weights'}): "
                        f"retrieval top-1 {report['retrieval_top1']:.4f}, ROC AUC {report['roc_auc']:.4f}, TAR@FAR=1e-3 "
                        f"{report['tar_at_far_1e-3']:.4f}, TAR@FAR=1e-2 {report['tar_at_far_1e-2']:.4f}, best threshold "
                        f"accuracy {report['best_accuracy']:.4f} at cosine {report['best_threshold']:.5g}")
            negatives = report["negative_pairs"]
            if negatives < 1000:  # FAR moves in steps of 1/negatives
                self._print(f"note: {negatives} negative pairs: FAR below 1/{negatives} cannot be measured, and TAR at "
                            "such a FAR is the share of positive pairs above every negative (more held-out identities "
                            "or images give more pairs)")
            written = self.save_plots(curves=curves)
            if written:
                self._print(f"plots: {', '.join(os.path.basename(p) for p in written)} in {self.run_dir.path}")
        self._cleanup_worker_dir()
        return report

    def augmented_batch(self, count: int = 32, stage: Stage | None = None):
        """(images, labels) exactly as the training pipeline feeds them (first stage by default)."""
        return augmented_batch(self.source, self._pipeline(stage or self.stages[0], True), count)

    def save_plots(self, confusion: np.ndarray | None = None, curves: dict | None = None) -> list[str]:
        """History, LR schedule, progressive stages, confusion matrix and augmented images as PNGs;
        the embedding task's ROC curve and similarity histograms from `curves`."""
        from efficientnet_tf import plots

        try:
            return plots.save_run_plots(
                self.run_dir.path, schedule=self._planned_lr, total_steps=self.steps_per_epoch * self.config.run.epochs,
                steps_per_epoch=self.steps_per_epoch, confusion=confusion, class_names=self.source.class_names,
                augmented=self.augmented_batch(), curves=curves)
        except (OSError, ValueError, RuntimeError) as err:  # a figure must not fail a finished run
            log.warning("plots not written (%s: %s)", type(err).__name__, err)
            return []

    def _write_run_info(self) -> None:
        resumes = []
        if self.previous_info is not None:
            stored, _ = load_run(self.run_dir.path)
            resumes = list(self.previous_info.get("resumes", []))
            changed = recorded_changes(stored, self.config)
            if changed:
                resumes.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changed,
                                **({"lr": self._lr_change} if self._lr_change else {})})
            if self._lr_change:
                self._print(change_line(self._lr_change, (stored.run.epochs, self.config.run.epochs)))
        self.run_dir.write_info(run_info(
            self.config,
            num_classes=self.source.num_classes,
            class_names=list(self.source.class_names),
            image_size=self.image_size,  # evaluation and export size
            train_image_size=self.stages[-1].image_size,  # the last training stage's size
            split=getattr(self.source, "split_description", ""),
            steps_per_epoch=self.steps_per_epoch,
            base_lr=self.base_lr,
            lr_schedule=self.schedule.to_json(),
            **({"eval_identities": list(self.source.eval_class_names)} if self.embedding else {}),
            **({"resumes": resumes} if resumes else {}),
        ))

    def _resume_schedule(self) -> None:
        """The schedule from the restored step on (`resume_lr`): the run's own, or continued from
        the LR it reached when this resume changes its length."""
        stored, info = load_run(self.run_dir.path) if self.run_dir.exists() else (None, None)
        self.schedule, self._lr_change = resumed_schedule(self.config, self.base_lr, self.steps_per_epoch,
                                                          int(self._optimizer_steps().numpy()), info, stored,
                                                          self._first_int8_aware_epoch * self.steps_per_epoch)
        self._train_fns.clear()  # a step traced before (train_on_batch) holds the schedule it was traced with

    def _restore(self) -> int:
        """Resume from the chief's newest readable checkpoint (every worker reads it); damaged
        newer ones are set aside by the chief (`training.checkpoints`)."""
        path, damaged = restore_newest_readable(self.checkpoint, self.run_dir.checkpoints, repair=self.chief)
        if path is None:
            return 0
        if damaged and self.chief:  # the manager read the old state file: let it read the repaired one
            self.manager = self._new_manager()
        self.resumed_from = path
        return int(self.epoch.numpy())

    def _enter_stage(self, stage: Stage) -> None:
        if len(self.stages) > 1:
            self._print(f"stage {stage.index + 1}/{len(self.stages)}: epochs {stage.first_epoch + 1}-{stage.end_epoch}, "
                        f"image size {stage.image_size}, dropout {stage.dropout_rate:.3f}, "
                        f"RandAugment magnitude {stage.randaug_magnitude:.1f}, mixup {stage.mixup_alpha:.2f}"
                        + (", backbone frozen" if stage.frozen else "") + (f", LR x{stage.lr_scale:g}" if stage.lr_scale != 1 else ""))
        self._set_frozen(stage.frozen)
        self.lr_scale.assign(stage.lr_scale)
        try:
            self.model.get_layer("top_dropout").rate = stage.dropout_rate
        except ValueError:
            pass  # dropout 0: no layer

    def _train_epoch(self, stage: Stage, epoch: int, validate: bool) -> dict:
        done = first = int(self.epoch_step.numpy())  # > 0: an interrupted epoch, continued
        # The same batches in the same order; a continued epoch starts after the ones already
        # trained on, skipped before they are decoded.
        dataset = distributed_dataset(self.strategy, self.source, self._pipeline(stage, True), training=True,
                                      epoch=epoch, repeat=True, skip_steps=first)
        iterator = iter(dataset)
        int8_aware = epoch >= self._first_int8_aware_epoch
        if int8_aware:
            self.enter_int8_aware(stage, epoch, fresh=not first)
        self.lr_constant.assign(self._quantization_aware_lr() if int8_aware else 0.0)
        loop = self._train_loop_fn(stage, int8_aware)
        progress = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["loss", "accuracy", "images/s"],
                                       verbose=1 if (self.verbose and self.chief) else 0)
        self._print(f"Epoch {epoch + 1}/{self.config.run.epochs}")
        loss_sum, correct_sum = (float(value) for value in self.epoch_sums.numpy())
        if first:
            self._print(f"continuing epoch {epoch + 1} at step {first + 1} of {self.steps_per_epoch}")
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
                    f"the last good checkpoint ({self.manager.latest_checkpoint or 'none yet'}) is kept. Lower ",
                    Arg("learning_rate"), " or check the data")
            if self._stop_requested() and done < self.steps_per_epoch:
                self._save_within_epoch(epoch, done, loss_sum, correct_sum)
                self._interrupted(f"at epoch {epoch + 1}, step {done} of {self.steps_per_epoch}")
            if every and done % every == 0 and done < self.steps_per_epoch:
                self._save_within_epoch(epoch, done, loss_sum, correct_sum)
            seen = done * self.config.run.batch_size
            progress.update(done, [("loss", loss_sum / done), ("accuracy", correct_sum / seen),
                                   ("images/s", seen / (time.perf_counter() - start))])
        elapsed = time.perf_counter() - start
        self.epoch_step.assign(0)
        self.epoch_sums.assign([0.0, 0.0])
        # Validation at the evaluation size, like the final report: what the exported model will see.
        row = {
            "epoch": epoch,
            "accuracy": round(correct_sum / (done * self.config.run.batch_size), 6),
            "loss": round(loss_sum / done, 6),
            **self._validation_columns(self._validate(epoch) if validate else None),
            "lr": self._last_step_lr(),
            "stage": stage.index,
            "image_size": stage.image_size,
            "dropout_rate": round(stage.dropout_rate, 4),
            "randaug_magnitude": round(stage.randaug_magnitude, 3),
            "mixup_alpha": round(stage.mixup_alpha, 4),
            "images_per_sec": round((done - first) * self.config.run.batch_size / elapsed, 1),
        }
        validation = (f"held-out retrieval top-1 {row['val_accuracy']:.4f} ROC AUC {row['val_roc_auc']:.4f} "
                      f"TAR@FAR=1e-2 {row['val_tar_at_far_1e-2']:.4f}" if self.embedding else
                      f"val_loss {row['val_loss']:.4f} val_accuracy {row['val_accuracy']:.4f}")
        self._print(f"epoch {epoch + 1}: loss {row['loss']:.4f} accuracy {row['accuracy']:.4f} {validation} "
                    f"lr {row['lr']:.3g} ({row['images_per_sec']:.0f} images/s)")
        return row

    def enter_int8_aware(self, stage: Stage, epoch: int, fresh: bool) -> None:
        """Before a quantization-aware epoch: on the first one (`fresh`, the phase's first epoch
        from its start), the averaged weights become the weights trained on and the average
        restarts, so that what is evaluated and exported is the int8-aware training's; on every
        one, the rounding ranges are measured again (the weights moved), as the export's int8
        calibration measures them: min and max over 200 training-pipeline images."""
        config = self.config
        restart_average = fresh and epoch == self._first_int8_aware_epoch and self.ema is not None
        if self._int8_aware is None:
            output = None if self.loss_model is self.model else self.loss_model.outputs[0]._keras_history.operation.name
            with self.strategy.scope(), dtype_policy(self.policy):
                self._int8_aware = Int8AwareModel(self.model, output_layer=output)
        if restart_average:
            self.ema.swap()
            self.ema.reset()
        # The export's calibration pipeline: training images, random crops, no other augmentation.
        pipeline = PipelineConfig(image_size=self.image_size, global_batch_size=config.run.batch_size,
                                  seed=config.run.seed)
        calibration = distributed_dataset(self.strategy, self.source, pipeline, training=True, epoch=epoch, repeat=True)
        batches = max(1, math.ceil(CALIBRATION_IMAGES / config.run.batch_size))
        self._int8_aware.calibrate(self.strategy, iter(calibration), batches)
        self._print(f"epoch {epoch + 1}: int8-aware (quantization_aware_epochs {config.model.quantization_aware_epochs}: "
                    f"activations rounded to 8 bits over ranges from {batches * config.run.batch_size} images, "
                    f"constant LR {self._quantization_aware_lr():.3g}"
                    + (", training from the averaged weights" if restart_average else "")
                    + ")")

    def _validate(self, epoch: int) -> dict:
        """The epoch's validation; the run's last epoch's also counts the confusion matrix and is
        kept for the final report."""
        if self.embedding or epoch + 1 < self.stages[-1].end_epoch:
            return self.evaluate()
        self._last_epoch_evaluation = self.evaluate(confusion=True)
        return self._last_epoch_evaluation

    def _validation_columns(self, val: dict | None) -> dict:
        """history.csv's validation columns; the embedding task's val_accuracy is held-out
        retrieval top-1 (it has no loss on identities it never trained on)."""
        if not self.embedding:
            val = val or {"top1": float("nan"), "loss": float("nan")}
            return {"val_accuracy": round(val["top1"], 6), "val_loss": round(val["loss"], 6)}
        keys = ("roc_auc", "tar_at_far_1e-3", "tar_at_far_1e-2")
        val = val or dict.fromkeys(("retrieval_top1",) + keys, float("nan"))
        return {"val_accuracy": round(val["retrieval_top1"], 6), "val_loss": float("nan"),
                **{f"val_{key}": round(val[key], 6) for key in keys}}

    def _save_within_epoch(self, epoch: int, done: int, loss_sum: float, correct_sum: float) -> None:
        """A checkpoint after step `done` of the epoch, with the epoch's running sums: a resume
        continues at the next batch and its history row covers the whole epoch. It takes the
        epoch's own number: the next save within the epoch, and the epoch's end, replace it."""
        self.epoch_step.assign(done)
        self.epoch_sums.assign([loss_sum, correct_sum])
        self.manager.save(checkpoint_number=epoch + 1)

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGINT (Ctrl-C) and SIGTERM stop training after the current step, with a checkpoint;
        a second one stops at once. With several workers, a signal to any of them (a preempted
        VM gets SIGTERM) stops all of them after the same step (`_stop_requested`). Only from the
        main thread (Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {number: signal.getsignal(number) for number in signals}

        def request_stop(number, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = number
            self._print(f"\n{signal.Signals(number).name}: stopping after the current step, with a checkpoint "
                        "(again to stop at once)")

        for number in signals:
            signal.signal(number, request_stop)
        try:
            yield
        finally:
            for number in signals:
                signal.signal(number, previous[number])

    def _stop_requested(self) -> bool:
        """Whether training stops after this step: this process got SIGINT/SIGTERM, or, with
        several workers, any worker did. Every worker calls this after the same steps, so the
        vote is a collective they all join; they then save the same checkpoint together."""
        if not self._several_workers:
            return self._stop_signal is not None
        if self._stop_vote is None:
            def vote(signalled):
                votes = self.strategy.run(lambda: tf.identity(signalled))
                return self.strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None)
            self._stop_vote = tf.function(vote)
        signalled = tf.constant(0.0 if self._stop_signal is None else 1.0)
        if float(self._stop_vote(signalled)) == 0:
            return False
        if self._stop_signal is None:  # another worker was signalled: stop with it, as if preempted too
            self._stop_signal = signal.SIGTERM
            self._print("another worker got a signal: stopping after the current step, with a checkpoint")
        return True

    def _interrupted(self, where: str):
        number, self._stop_signal = self._stop_signal, None
        # history.csv already holds exactly the finished epochs, as the checkpoint's epoch counter says.
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(number).name} {where}: checkpoint {self.manager.latest_checkpoint} and "
            "history.csv are consistent with it; train again with the same settings (the same command) to resume",
            number)

    def _lr_at(self, step):
        scheduled = self.schedule(step) * self.lr_scale
        return tf.where(self.lr_constant > 0, tf.cast(self.lr_constant, scheduled.dtype), scheduled)

    def _last_step_lr(self) -> float:
        """The LR the epoch's last optimizer step used (the counter already points past it)."""
        return float(self._lr_at(tf.maximum(self._optimizer_steps() - 1, 0)))

    @property
    def _first_int8_aware_epoch(self) -> int:
        """The quantization-aware epochs' first (the run's epoch count when there are none)."""
        return self.config.run.epochs - self.config.model.quantization_aware_epochs

    def _quantization_aware_lr(self) -> float:
        return self.base_lr * self.config.model.quantization_aware_lr_scale

    def _planned_lr(self, step: int) -> float:
        """The LR of global step `step` as planned: the schedule, then the quantization-aware
        epochs' constant (what lr_schedule.png draws)."""
        if step >= self._first_int8_aware_epoch * self.steps_per_epoch:
            return self._quantization_aware_lr()
        return float(self.schedule(step))

    def _save_epoch(self, history, row, writer) -> None:
        # Every worker saves (collectives); only the chief's directory is kept.
        self.manager.save(checkpoint_number=int(row["epoch"]) + 1)
        if not self.chief:
            return
        self.run_dir.write_history(history)
        with writer.as_default(step=int(row["epoch"])):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "image_size"):
                tf.summary.scalar(key, float(row[key]))
        writer.flush()

    def _cleanup_worker_dir(self) -> None:
        if not self.chief:
            remove_checkpoints(self.checkpoint_dir)

    def evaluate(self, image_size: int | None = None, confusion: bool = False, split: str = "eval") -> dict:
        """Top-1/top-5/loss on `split` ('eval', or 'train': the training images, preprocessed for
        evaluation) at `image_size` (default: the run's evaluation size), with the EMA weights
        when the run keeps them; with `confusion`, also the confusion matrix (rows: true class)
        as a numpy array. The embedding task: verification and retrieval instead
        (`evaluate_embeddings`)."""
        if self.embedding:
            return self.evaluate_embeddings(image_size, split)
        size = image_size or self.image_size
        stage = dataclasses.replace(self.stages[-1], image_size=size)
        # Full batches padded with zero-weight examples: static shapes (TPU), the same number of
        # steps on every worker (collectives), no empty replica batch, every example counted once.
        dataset = distributed_dataset(self.strategy, self.source, self._pipeline(stage, False), training=False,
                                      split=split)
        if confusion not in self._eval_fns:
            self._eval_fns[confusion] = self._make_eval_fn(confusion)
        eval_fn = self._eval_fns[confusion]
        with self._evaluated_weights():
            totals = np.zeros(4)
            matrix = np.zeros((self.source.num_classes,) * 2, dtype=np.int64) if confusion else None
            start = time.perf_counter()
            for images, labels, weights in dataset:
                results = eval_fn(images, labels, weights)
                totals += np.array([float(t) for t in results[:4]])
                if confusion:
                    matrix += results[4].numpy().astype(np.int64)
            elapsed = time.perf_counter() - start
        loss, top1, top5, count = totals
        count = max(count, 1.0)
        report = {"top1": top1 / count, "top5": top5 / count, "loss": loss / count, "images": int(count),
                  "images_per_sec": count / max(elapsed, 1e-9)}
        if confusion:
            report["confusion_matrix"] = matrix
        return report

    @contextlib.contextmanager
    def _evaluated_weights(self):
        """The EMA weights in the model while evaluating, when the run keeps them; the trained
        weights back afterwards, whatever happens."""
        if self.ema is not None:
            self.ema.swap()
        try:
            yield
        finally:
            if self.ema is not None:
                self.ema.swap()

    def embeddings(self, split: str = "eval", image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(L2-normalised embeddings [N, D], identity labels [N]) of every image of `split`
        (eval: the held-out identities), with the EMA weights when the run keeps them."""
        stage = dataclasses.replace(self.stages[-1], image_size=image_size or self.image_size)
        dataset = distributed_dataset(self.strategy, self.source, self._pipeline(stage, False), training=False,
                                      split=split)
        if "embeddings" not in self._eval_fns:
            strategy = self.strategy

            def step(images, labels, weights):
                return tf.cast(self.model(images, training=False), tf.float32), labels, weights

            @tf.function(autograph=False)
            def run(images, labels, weights):
                # Every replica's (and worker's) batch, gathered: the metrics need all pairs.
                return [strategy.gather(r, axis=0) for r in strategy.run(step, args=(images, labels, weights))]

            self._eval_fns["embeddings"] = run
        with self._evaluated_weights():
            embeddings, labels = [], []
            for images, batch_labels, weights in dataset:
                batch_embeddings, batch_labels, weights = (t.numpy() for t in self._eval_fns["embeddings"](
                    images, batch_labels, weights))
                real = weights > 0  # padding of the last batch
                embeddings.append(batch_embeddings[real])
                labels.append(batch_labels[real])
        return np.concatenate(embeddings), np.concatenate(labels).astype(np.int64)

    def evaluate_embeddings(self, image_size: int | None = None, split: str = "eval", curves: bool = False) -> dict:
        """Verification over all positive pairs and a seeded sample of negative pairs (ROC AUC,
        TAR at FAR 1e-3 and 1e-2, best threshold accuracy) and leave-one-out 1-NN retrieval by
        cosine, on `split`'s identities (eval: held out from training); with `curves`, also
        what the ROC and similarity plots draw (key "curves")."""
        start = time.perf_counter()
        embeddings, labels = self.embeddings(split, image_size)
        elapsed = time.perf_counter() - start
        report, curve_data = verification.evaluate_embeddings(embeddings, labels, seed=self.config.run.seed or 0)
        report["images_per_sec"] = len(labels) / max(elapsed, 1e-9)  # "images" is the metrics' own count
        if curves:
            report["curves"] = curve_data
        return report

    def _make_eval_fn(self, confusion: bool):
        strategy, k, num_classes = self.strategy, min(5, self.source.num_classes), self.source.num_classes

        def step(images, labels, weights):
            logits = tf.cast(self.model(images, training=False), tf.float32)
            sparse = self._sparse_labels(labels)
            per_example = keras.losses.sparse_categorical_crossentropy(sparse, logits, from_logits=True)
            top1 = self._correct(sparse, logits)
            top5 = tf.cast(tf.math.in_top_k(sparse, logits, k), tf.float32)
            results = [tf.reduce_sum(per_example * weights), tf.reduce_sum(top1 * weights),
                       tf.reduce_sum(top5 * weights), tf.reduce_sum(weights)]
            if confusion:
                predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
                results.append(tf.math.confusion_matrix(sparse, predicted, num_classes, weights=weights, dtype=tf.float32))
            return results

        @tf.function(autograph=False)  # straight-line code: nothing for autograph to convert
        def run(images, labels, weights):
            results = strategy.run(step, args=(images, labels, weights))
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

        return run


def train(config: TrainConfig, verbose: bool = True) -> dict:
    """Train `config` (resuming its model_dir) and return the final evaluation report."""
    return Trainer(config, verbose=verbose).fit()
