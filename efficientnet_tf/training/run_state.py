"""A run's checkpoints: where training stands (epoch, step within it, its running sums), saved
with the model, optimizer, EMA and the task's objects; restored on resume."""

from __future__ import annotations

import tensorflow as tf

from efficientnet_tf.training.checkpoints import remove_checkpoints, repair_state_file, restore_newest_readable
from efficientnet_tf.training.rundir import RunDir


class RunState:
    """Create it inside the strategy's scope (its counters are distributed variables), then
    `track` what the checkpoints hold."""

    def __init__(self):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        # Where an interrupted epoch stopped (0: at its start) and its running loss/correct sums,
        # so that a resumed epoch continues at the next batch and its history row covers it all.
        self.epoch_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_step")
        self.epoch_sums = tf.Variable([0.0, 0.0], dtype=tf.float64, trainable=False, name="epoch_sums")
        self.resumed_from = None  # the checkpoint the last `restore` read

    def track(self, run_dir: RunDir, strategy: tf.distribute.Strategy, chief: bool, keep: int, overwrite: bool,
              **objects) -> None:
        """Checkpoint `objects` (by name) with the counters, in the run's checkpoint directory
        (another worker's: one it can throw away; they must save too, for the collectives)."""
        self.run_dir, self.chief, self.keep = run_dir, chief, keep
        self.checkpoint = tf.train.Checkpoint(epoch=self.epoch, epoch_step=self.epoch_step,
                                              epoch_sums=self.epoch_sums, **objects)
        if chief:
            self.directory = run_dir.checkpoints
        else:
            resolver = strategy.cluster_resolver
            self.directory = run_dir.worker_checkpoints(resolver.task_type, resolver.task_id)
        if chief and not overwrite:
            repair_state_file(self.directory)  # a garbage state file would stop the manager
        self.renew_manager()

    def renew_manager(self) -> None:
        """A manager that reads the checkpoint directory afresh (after it was repaired or set aside)."""
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.keep)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def restore(self) -> int:
        """Resume from the chief's newest readable checkpoint (every worker reads it); damaged
        newer ones are set aside by the chief (`training.checkpoints`). Returns the epochs done."""
        path, damaged = restore_newest_readable(self.checkpoint, self.run_dir.checkpoints, repair=self.chief)
        if path is None:
            return 0
        if damaged and self.chief:  # the manager read the old state file: let it read the repaired one
            self.renew_manager()
        self.resumed_from = path
        return int(self.epoch.numpy())

    def save_epoch(self, epoch: int) -> None:
        """After epoch `epoch` (from 0): the next epoch starts at its first step."""
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)

    def save_within_epoch(self, epoch: int, done: int, loss_sum: float, correct_sum: float) -> None:
        """A checkpoint after step `done` of the epoch, with the epoch's running sums: a resume
        continues at the next batch and its history row covers the whole epoch. It takes the
        epoch's own number: the next save within the epoch, and the epoch's end, replace it."""
        self.epoch_step.assign(done)
        self.epoch_sums.assign([loss_sum, correct_sum])
        self.manager.save(checkpoint_number=epoch + 1)

    def epoch_finished(self) -> None:
        self.epoch_step.assign(0)
        self.epoch_sums.assign([0.0, 0.0])

    def remove_worker_copies(self) -> None:
        """Another worker's checkpoints, once training ended (the chief's are the run's)."""
        if not self.chief:
            remove_checkpoints(self.directory)
