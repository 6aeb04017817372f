import keras
import numpy as np
import pytest

from efficientnet_tf.training.optim import RMSpropTF, make_optimizer
from efficientnet_tf.training import TrainConfig


def test_rmsprop_follows_tf1_update_rule():
    """tf.train.RMSPropOptimizer: ms starts at 1, eps inside the sqrt, lr inside the momentum."""
    variable = keras.Variable(np.array([1.0, -2.0, 0.5], np.float32))
    optimizer = make_optimizer("rmsprop", 0.1)
    assert isinstance(optimizer, RMSpropTF)
    ms, mom, value = np.ones(3), np.zeros(3), variable.numpy().astype(np.float64)
    for gradient in ([0.3, -0.01, 2.0], [0.1, 0.2, -1.0], [-0.5, 0.0, 0.4]):
        optimizer.apply([np.array(gradient, np.float32)], [variable])
        ms = 0.9 * ms + 0.1 * np.square(gradient)
        mom = 0.9 * mom + 0.1 * np.array(gradient) / np.sqrt(ms + 1e-3)
        value = value - mom
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5)


def test_unset_schedule_keeps_the_papers_shape_for_any_run_length():
    assert TrainConfig.from_settings(epochs=350).schedule_epochs() == (5.0, 2.4)  # the papers' ImageNet run, literally
    warmup, decay = TrainConfig.from_settings(epochs=15).schedule_epochs()
    assert warmup == pytest.approx(5 * 15 / 350) and decay == pytest.approx(2.4 * 15 / 350)
    assert 0.97 ** (15 / decay) == pytest.approx(0.97 ** (350 / 2.4))  # ends at the same fraction of peak
    assert TrainConfig.from_settings(epochs=15, warmup_epochs=1, lr_decay_epochs=3).schedule_epochs() == (1, 3)  # explicit: literal
    with pytest.raises(ValueError, match="lr_decay_epochs must be > 0, got 0"):
        TrainConfig.from_settings(lr_decay_epochs=0).validate()
