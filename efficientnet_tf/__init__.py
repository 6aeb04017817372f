"""EfficientNet V1, V2 and Lite in Keras, weight-compatible with keras.applications.

Layout (imports point one way, left to right):

    models  <-  data  <-  training  <-  deploy
    (block strings, registry,   (sources, tf.data       (config, stages, EMA, optimizer,   (SavedModel/TFLite
     layers, builder, weights)   pipeline, augment)      strategy, run directory, loop)      export, predict)

`plots` draws figures from what a run directory holds; `files` owns atomic writes.
The names below are imported on first use; only the custom Keras layers are imported at once,
so that `keras.models.load_model` finds them after `import efficientnet_tf`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from efficientnet_tf._lazy import lazy_exports
from efficientnet_tf.models import layers as _registered_layers  # noqa: F401  (registers our Keras layers)

__version__ = "0.1.0"

_EXPORTS = {
    "BlockSpec": "models.block_args",
    "decode_block": "models.block_args",
    "decode_blocks": "models.block_args",
    "encode_block": "models.block_args",
    "encode_blocks": "models.block_args",
    "ModelConfig": "models.configs",
    "custom_config": "models.configs",
    "get_config": "models.configs",
    "list_models": "models.configs",
    "list_weights": "models.official",
    "FeatureInfo": "models.builder",
    "build_efficientnet": "models.builder",
    "build_feature_extractor": "models.factory",
    "build_model": "models.factory",
    "round_filters": "models.builder",
    "round_repeats": "models.builder",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

# Module paths before the subpackages (0.1): still importable, with a FutureWarning. Each old
# module forwards to the new modules that now hold its names (first match wins); renamed names too.
MOVED_MODULES = {
    "block_args": ("models.block_args",),
    "configs": ("models.configs",),
    "layers": ("models.layers",),
    "builder": ("models.builder", "models.configs"),
    "weights": ("models.weights",),
    "flops": ("models.flops",),
    "input_pipeline": ("data.pipeline", "data.config"),
    "augment": ("data.augment", "data.config"),
    "image_io": ("data.image_io",),
    "pixels": ("data.pixels",),
    "optim": ("training.optim", "training.config"),
    "distribute": ("training.distribute", "training.config"),
    "trainer": ("training.loop", "training.config", "training.stages", "training.ema", "training.rundir",
                "training.report", "training.errors", "files"),
    "export": ("deploy.export", "deploy.saved_model", "deploy.tflite", "deploy.onnx", "deploy.reports", "deploy.calibration",
               "deploy.serving", "deploy.config", "files"),
    "predict": ("deploy.predict",),
}
RENAMED = {"load_run_config": "load_run"}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, targets: tuple[str, ...]):
        self.targets = tuple(f"{__name__}.{target}" for target in targets)

    def create_module(self, spec):
        return None  # a fresh module that forwards to the new ones (they keep their own __spec__)

    def exec_module(self, module):
        warnings.warn(f"{module.__name__} moved to {self.targets[0]} (see the README's Development section)",
                      FutureWarning, stacklevel=2)
        targets = [importlib.import_module(target) for target in self.targets]

        def forward(name):
            for target in targets:
                if hasattr(target, RENAMED.get(name, name)):
                    return getattr(target, RENAMED.get(name, name))
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r} (it moved to "
                                 f"{', '.join(self.targets)}; not there either)")

        module.__getattr__ = forward
        module.__dir__ = lambda: sorted({n for target in targets for n in dir(target)})


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds only `efficientnet_tf.<old name>` for the names in MOVED_MODULES."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(MOVED_MODULES[name]))


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
