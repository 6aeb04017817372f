"""Every kind of damage to a run's newest checkpoint falls back to the previous one, keeps the
damaged files (renamed, never deleted) and leaves a directory the next save can use."""

import os

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf.training.checkpoints import checkpoint_paths, restore_newest_readable, unreadable_reason

DATA, INDEX = "ckpt-2.data-00000-of-00001", "ckpt-2.index"


def _truncate(path, fraction):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * fraction))


def _garbage(path):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


DAMAGE = {
    "zero-length data": lambda d: _truncate(os.path.join(d, DATA), 0),
    "truncated data": lambda d: _truncate(os.path.join(d, DATA), 0.5),
    "missing data": lambda d: os.remove(os.path.join(d, DATA)),
    "garbage data": lambda d: _garbage(os.path.join(d, DATA)),
    "zero-length index": lambda d: _truncate(os.path.join(d, INDEX), 0),
    "truncated index": lambda d: _truncate(os.path.join(d, INDEX), 0.5),
    "garbage index": lambda d: _garbage(os.path.join(d, INDEX)),
}


def _files(directory):
    return sorted(os.listdir(directory))


def test_the_fixture_run_has_two_readable_checkpoints(run_copy):
    paths = checkpoint_paths(os.path.join(run_copy, "checkpoints"))
    assert [os.path.basename(p) for p in paths] == ["ckpt-1", "ckpt-2"]
    assert all(unreadable_reason(p) is None for p in paths)


def _plain_restore(tiny_run_dir, name):
    """Independent path: TF's own restore of an undamaged checkpoint into a fresh model."""
    from efficientnet_tf import build_model

    model = build_model("efficientnet-lite0", num_classes=10, input_shape=(32, 32, 3), classifier_activation=None)
    tf.train.Checkpoint(model=model).restore(os.path.join(tiny_run_dir, "checkpoints", name)).expect_partial()
    return model


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_newest_checkpoint_falls_back_and_is_kept(tiny_run, run_copy, damage):
    from efficientnet_tf.deploy.export import load_trained_model

    checkpoints = os.path.join(run_copy, "checkpoints")
    DAMAGE[damage](checkpoints)
    before = _files(checkpoints)
    assert unreadable_reason(os.path.join(checkpoints, "ckpt-2")) is not None

    model, info = load_trained_model(run_copy, use_ema=False)
    assert os.path.basename(info["checkpoint"]) == "ckpt-1"
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = _plain_restore(tiny_run[0], "ckpt-1")(images, training=False)
    newest = _plain_restore(tiny_run[0], "ckpt-2")(images, training=False)
    np.testing.assert_allclose(model(images, training=False), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(expected, newest)  # the two checkpoints are told apart by their weights
    after = _files(checkpoints)
    # Nothing deleted: each damaged file is there under a new name; the state file lists ckpt-1 only.
    renamed = [f for f in after if ".damaged-" in f]
    assert sorted(f.split(".damaged-")[0] for f in renamed) == sorted(f for f in before if f.startswith("ckpt-2"))
    assert [os.path.basename(p) for p in checkpoint_paths(checkpoints)] == ["ckpt-1"]
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-1")


def test_resume_after_damage_retrains_the_lost_epoch(run_copy):
    """Trainer.fit resumes from ckpt-1, trains epoch 2 again and saves a new ckpt-2 beside the kept one."""
    from efficientnet_tf.training import Trainer
    from efficientnet_tf.training.rundir import load_run, read_history

    checkpoints = os.path.join(run_copy, "checkpoints")
    DAMAGE["truncated data"](checkpoints)
    config, _ = load_run(run_copy)
    trainer = Trainer(config, verbose=False)
    trainer.fit(validate=False)
    assert trainer.state.resumed_from.endswith("ckpt-1")
    files = _files(checkpoints)
    assert f"{DATA}.damaged-1" in files and DATA in files
    assert unreadable_reason(os.path.join(checkpoints, "ckpt-2")) is None
    assert [int(row["epoch"]) for row in read_history(run_copy)] == [0, 1]


def test_a_damaged_state_file_does_not_hide_good_checkpoints(run_copy):
    from efficientnet_tf.deploy.export import load_trained_model

    with open(os.path.join(run_copy, "checkpoints", "checkpoint"), "w") as f:
        f.write("\x00garbage {{{ not a proto\n")
    _, info = load_trained_model(run_copy)
    assert os.path.basename(info["checkpoint"]) == "ckpt-2"


def test_every_checkpoint_damaged_is_one_clear_error_and_nothing_is_removed(run_copy):
    from efficientnet_tf.deploy.export import load_trained_model
    from efficientnet_tf.training.errors import UnreadableCheckpoints

    checkpoints = os.path.join(run_copy, "checkpoints")
    for name in ("ckpt-1", "ckpt-2"):
        _truncate(os.path.join(checkpoints, f"{name}.data-00000-of-00001"), 0.5)
    before = _files(checkpoints)
    with pytest.raises(UnreadableCheckpoints, match="every checkpoint in .* is damaged.*kept there for inspection"):
        load_trained_model(run_copy)
    assert _files(checkpoints) == before


def test_a_readable_checkpoint_of_another_model_is_not_called_damaged(run_copy):
    """A mismatch is the caller's mistake: an error naming it, and no file renamed."""
    from efficientnet_tf import build_model

    checkpoints = os.path.join(run_copy, "checkpoints")
    before = _files(checkpoints)
    other = tf.train.Checkpoint(model=build_model("efficientnet-b0", num_classes=10, input_shape=(32, 32, 3)))
    with pytest.raises(ValueError, match="ckpt-2 is readable but does not match this model"):
        restore_newest_readable(other, checkpoints, partial=True)
    assert _files(checkpoints) == before


def test_after_a_fallback_the_state_file_is_relative_and_managed(run_copy, tmp_path):
    """The rewritten state file names checkpoints relative to their directory (a moved run reads
    its own) with their times, so CheckpointManager keeps pruning them and a second damage can
    still fall back."""
    from efficientnet_tf import build_model
    from efficientnet_tf.deploy.export import load_trained_model
    from efficientnet_tf.training import Trainer
    from efficientnet_tf.training.rundir import load_run

    checkpoints = os.path.join(run_copy, "checkpoints")
    DAMAGE["truncated data"](checkpoints)
    load_trained_model(run_copy)
    state = open(os.path.join(checkpoints, "checkpoint")).read()
    assert 'model_checkpoint_path: "ckpt-1"' in state and "/" not in state
    model = build_model("efficientnet-lite0", num_classes=10, input_shape=(32, 32, 3))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), checkpoints, max_to_keep=3)
    assert [os.path.basename(p) for p in manager.checkpoints] == ["ckpt-1"]  # managed, not "preserved"

    config, _ = load_run(run_copy)
    Trainer(config, verbose=False).fit(validate=False)  # retrains epoch 2: a new ckpt-2
    DAMAGE["zero-length data"](checkpoints)  # damaged again
    moved = str(tmp_path / "moved_run")
    os.rename(run_copy, moved)
    _, info = load_trained_model(moved)
    assert info["checkpoint"] == os.path.join(moved, "checkpoints", "ckpt-1")


def test_a_garbage_state_file_is_kept_aside_and_training_resumes(run_copy):
    from efficientnet_tf.training import Trainer
    from efficientnet_tf.training.rundir import load_run

    checkpoints = os.path.join(run_copy, "checkpoints")
    with open(os.path.join(checkpoints, "checkpoint"), "wb") as f:
        f.write(np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8).tobytes())
    config, _ = load_run(run_copy)
    trainer = Trainer(config, verbose=False)
    assert trainer.restore_for_eval() and trainer.state.resumed_from.endswith("ckpt-2")
    assert "checkpoint.damaged-1" in os.listdir(checkpoints)
    assert [os.path.basename(p) for p in trainer.state.manager.checkpoints] == ["ckpt-1", "ckpt-2"]
