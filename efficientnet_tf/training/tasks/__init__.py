"""The tasks a run can learn, by the name `TrainConfig.recognition.task` gives."""

from __future__ import annotations

from efficientnet_tf.training.config import TrainConfig
from efficientnet_tf.training.tasks.base import Task
from efficientnet_tf.training.tasks.classification import ClassificationTask
from efficientnet_tf.training.tasks.embedding import EmbeddingTask

TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassificationTask, EmbeddingTask)}

__all__ = ["TASKS", "ClassificationTask", "EmbeddingTask", "Task", "make_task"]


def make_task(config: TrainConfig) -> Task:
    """The task `config` trains."""
    return TASKS[config.recognition.task](config)
