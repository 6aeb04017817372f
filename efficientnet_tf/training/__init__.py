"""Training: config -> stages -> optimizer, EMA, strategy -> the loop (given a task and hooks), writing one run directory."""

from efficientnet_tf._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config", "DataConfig": "config", "NetworkConfig": "config", "OptimizerConfig": "config",
    "AugmentConfig": "config", "ProgressiveConfig": "config", "RunConfig": "config",
    "Stage": "stages", "plan_stages": "stages", "stage_pipeline": "stages", "effective_bn_momentum": "stages",
    "WeightAverage": "ema",
    "RunDir": "rundir", "load_run": "rundir", "read_history": "rundir", "HISTORY_COLUMNS": "rundir",
    "Trainer": "loop", "train": "loop", "TrainingDiverged": "errors", "UnreadableCheckpoints": "errors",
    "TrainingInterrupted": "errors",
    "replot_run": "report", "RunPlots": "report",
    "Task": "tasks", "ClassificationTask": "tasks", "EmbeddingTask": "tasks", "make_task": "tasks",
    "TrainingHook": "hooks",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
