"""The optimizers and learning-rate schedules a run can name, and the papers' ImageNet schedule:
the constants `config` declares its settings with and `optim` builds from (both import them here,
so neither imports the other to get them)."""

OPTIMIZERS = ("rmsprop", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine", "constant")
# tensorflow/tpu's EfficientNet ImageNet run: 350 epochs, 5 warmup, x0.97 every 2.4 (docs/training.md).
PAPER_EPOCHS, PAPER_WARMUP_EPOCHS, PAPER_DECAY_EPOCHS, PAPER_DECAY_RATE = 350, 5.0, 2.4, 0.97
