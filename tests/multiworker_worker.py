"""One worker of the two-process MultiWorkerMirroredStrategy test (run by test_trainer.py).

usage: multiworker_worker.py TASK_INDEX PORT0 PORT1 MODEL_DIR OUT.npz RECORDS_DIR [SIGNAL:CALLS [EVERY]]

RECORDS_DIR holds the digits as tensorflow/tpu-format train-* and validation-* TFRecord files.
SIGNAL:CALLS (e.g. TERM:6, KILL:2): this worker sends itself that signal after that many compiled
train-loop calls (TERM: as a preempted VM gets; it exits 143 once the workers have saved
together). EVERY: --checkpoint_every_steps.
"""

import json
import logging
import os
import sys

task, port0, port1, model_dir, out, records = sys.argv[1:7]
signal_name, _, signal_calls = (sys.argv[7] if len(sys.argv) > 7 else "-").partition(":")
checkpoint_every_steps = int(sys.argv[8]) if len(sys.argv) > 8 else 0
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]},
    "task": {"type": "worker", "index": int(task)},
})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from efficientnet_tf.training import TrainConfig, Trainer  # noqa: E402
from efficientnet_tf.training.errors import TrainingInterrupted  # noqa: E402

# Which files each input pipeline reads is logged at INFO: the test reads it from this output.
handler = logging.StreamHandler(sys.stdout)
logging.getLogger("efficientnet_tf.data.sources").addHandler(handler)
logging.getLogger("efficientnet_tf.data.sources").setLevel(logging.INFO)
config = TrainConfig.from_settings(model="efficientnet-lite0", dataset=f"tfrecord:{records}/train-*",
                                   eval_dataset=f"tfrecord:{records}/validation-*",
                                   class_names_file=f"{records}/classes.txt", model_dir=model_dir, epochs=2,
                                   steps_per_epoch=4, batch_size=16, image_size=32, strategy="auto", dropout_rate=0.0,
                                   drop_connect_rate=0.0, seed=0, checkpoint_every_steps=checkpoint_every_steps)
trainer = Trainer(config, verbose=False)
assert trainer.replicas == 2, trainer.replicas
if signal_calls:
    import signal

    from signalling import signal_after_calls

    signal_after_calls(trainer, int(signal_calls), getattr(signal, f"SIG{signal_name}"))
try:
    report = trainer.fit(validate=True)
except TrainingInterrupted as stopped:
    print(f"worker {task}: {stopped}")
    sys.exit(128 + stopped.signal_number)
np.savez(out, *[np.asarray(w) for w in trainer.model.get_weights()], top1=report["top1"],
         iterations=int(trainer.optimizer_steps().numpy()))
print(f"worker {task} done: chief={trainer.chief}")
