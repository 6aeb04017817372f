"""The quantization-aware epochs at a run's end: when they start, their LR, and entering one."""

from __future__ import annotations

import math

from efficientnet_tf.data.pipeline import CALIBRATION_IMAGES, PipelineConfig, distributed_dataset
from efficientnet_tf.models.scopes import dtype_policy
from efficientnet_tf.training.config import TrainConfig
from efficientnet_tf.training.quantization_aware import Int8AwareModel


class Int8AwareEpochs:
    """The last `quantization_aware_epochs` epochs train through the int8 rounding
    (`quantization_aware`) at a constant LR.

    Args:
        config: the run's settings.
        base_lr: the run's peak LR (the constant LR is a share of it).
    """

    def __init__(self, config: TrainConfig, base_lr: float):
        self.config = config
        self.first_epoch = config.run.epochs - config.model.quantization_aware_epochs  # epochs when there are none
        self.lr = base_lr * config.model.quantization_aware_lr_scale
        self.model: Int8AwareModel | None = None  # built at the first quantization-aware epoch

    def includes(self, epoch: int) -> bool:
        return epoch >= self.first_epoch

    def enter(self, trainer, epoch: int, fresh: bool) -> None:
        """Before a quantization-aware epoch: on the first one (`fresh`, the phase's first epoch
        from its start), the averaged weights become the weights trained on and the average
        restarts, so that what is evaluated and exported is the int8-aware training's; on every
        one, the rounding ranges are measured again (the weights moved), as the export's int8
        calibration measures them: min and max over 200 training-pipeline images."""
        config = self.config
        restart_average = fresh and epoch == self.first_epoch and trainer.ema is not None
        if self.model is None:
            loss_model = trainer.task.loss_model
            output = None if loss_model is trainer.model else loss_model.outputs[0]._keras_history.operation.name
            with trainer.strategy.scope(), dtype_policy(trainer.policy):
                self.model = Int8AwareModel(trainer.model, output_layer=output)
        if restart_average:
            trainer.ema.swap()
            trainer.ema.reset()
        # The export's calibration pipeline: training images, random crops, no other augmentation.
        pipeline = PipelineConfig(image_size=trainer.image_size, global_batch_size=config.run.batch_size,
                                  seed=config.run.seed)
        calibration = distributed_dataset(trainer.strategy, trainer.source, pipeline, training=True, epoch=epoch,
                                          repeat=True)
        batches = max(1, math.ceil(CALIBRATION_IMAGES / config.run.batch_size))
        self.model.calibrate(trainer.strategy, iter(calibration), batches)
        trainer.say(f"epoch {epoch + 1}: int8-aware (quantization_aware_epochs {config.model.quantization_aware_epochs}: "
                    f"activations rounded to 8 bits over ranges from {batches * config.run.batch_size} images, "
                    f"constant LR {self.lr:.3g}" + (", training from the averaged weights" if restart_average else "")
                    + ")")
