"""SIGINT/SIGTERM during training: stop after the step, checkpoint and history consistent with it,
one line saying how to resume, a non-zero exit; the resumed run continues at the next batch."""

import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from efficientnet_tf.training import TrainConfig, Trainer
from efficientnet_tf.training.errors import TrainingInterrupted
from efficientnet_tf.training.rundir import read_history
from signalling import signal_after_calls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _counter(checkpoint, name):
    return int(tf.train.load_checkpoint(checkpoint).get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_epoch_saves_the_step_and_the_resume_continues_there(tmp_path, signal_number):
    config = TrainConfig.from_settings(model="efficientnet-lite0", dataset="digits", model_dir=str(tmp_path), epochs=2,
                                       steps_per_epoch=STEPS, batch_size=16, image_size=32, seed=0)
    trainer = Trainer(config, verbose=False)
    signal_after_calls(trainer, STEPS + 3, signal_number)  # epoch 2, after its third step: as if Ctrl-C came then
    handler_before = signal.getsignal(signal_number)
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIG\w+ at epoch 2, step 3 of 6: checkpoint .*ckpt-2"):
        trainer.fit(validate=False)
    assert signal.getsignal(signal_number) is handler_before  # the caller's handler is back
    newest = tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints"))
    assert (_counter(newest, "epoch"), _counter(newest, "epoch_step")) == (1, 3)
    assert [int(row["epoch"]) for row in read_history(str(tmp_path))] == [0]  # the finished epoch only

    resumed = Trainer(config, verbose=False)
    resumed.fit(validate=False)
    # Independent count: two epochs of 6 steps, each batch trained on once (not 6 + 3 + 6).
    assert int(resumed.optimizer.iterations.numpy()) == 2 * STEPS
    assert [int(row["epoch"]) for row in read_history(str(tmp_path))] == [0, 1]
    newest = tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints"))
    assert (_counter(newest, "epoch"), _counter(newest, "epoch_step")) == (2, 0)


def test_ctrl_c_at_the_command_line_exits_130_with_one_line_and_the_same_command_resumes(tmp_path):
    command = [sys.executable, "-u", "main.py", "--model=efficientnet-lite0", "--dataset=digits", "--epochs=3",
               "--steps_per_epoch=30", "--batch_size=16", "--image_size=32", f"--model_dir={tmp_path}",
               "--mode=train"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    for line in process.stdout:
        if line.startswith("Epoch 2/3") or time.time() > deadline:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGINT ") and "resume" in last
    newest = tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints"))
    assert len(read_history(str(tmp_path))) == _counter(newest, "epoch")  # history matches the checkpoint
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [int(row["epoch"]) for row in read_history(str(tmp_path))] == [0, 1, 2]
