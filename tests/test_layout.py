"""The package's shape: imports point one way, one source of truth for settings, one atomic
write, library messages without CLI flags, old module paths still import."""

import ast
import dataclasses
import importlib
import importlib.util
import json
import pathlib
import subprocess
import sys
import warnings

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "efficientnet_tf"
ROOT = PACKAGE.parent
LAYERS = ("models", "data", "training", "deploy")  # each may import only itself and the ones before it
BASE = {"efficientnet_tf", "efficientnet_tf._lazy", "efficientnet_tf.files", "efficientnet_tf.settings",
        "efficientnet_tf.advice"}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every efficientnet_tf module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("efficientnet_tf"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if (ROOT / candidate.replace(".", "/")).with_suffix(".py").exists() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("efficientnet_tf")}
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
PLOTS = ("efficientnet_tf.plots", "efficientnet_tf.plots_history")  # the figures, and the history they read


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"efficientnet_tf"}))  # the root re-exports the API
def test_imports_point_down(module):
    own = _layer(module)
    for target in _imports(MODULES[module]) - BASE - {module}:
        if module in PLOTS:
            # The run directory, and the numpy verification metrics its ROC plot labels (no loop, no model).
            assert target in ("efficientnet_tf.training.rundir", "efficientnet_tf.training.verification") + PLOTS, \
                f"plots imports {target}: only the run directory and the verification metrics"
            continue
        if target in PLOTS:  # drawn by the trainer's plots hook and replot (training.report), and the export
            assert module in ("efficientnet_tf.training.report", "efficientnet_tf.deploy.export"), module
            continue
        target_layer = _layer(target)
        assert own is not None and target_layer is not None, f"{module} imports {target}"
        assert target_layer <= own, f"{module} ({LAYERS[own]}) imports {target} ({LAYERS[target_layer]}): upward"


MAX_MODULE_LINES = 400


def test_modules_stay_small():
    """One job a module: none of the package's modules grows past MAX_MODULE_LINES lines."""
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    offenders = [f"{path} ({count} lines)" for path, count in sorted(sizes.items()) if count > MAX_MODULE_LINES]
    assert offenders == [], f"modules over {MAX_MODULE_LINES} lines: {', '.join(offenders)}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles a depth-first walk of `graph` meets, each as its modules in import order (the
    first again at the end); none if and only if the graph has no cycle."""
    cycles, done, path = [], set(), []

    def visit(module):
        path.append(module)
        for target in sorted(graph[module]):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    return cycles


def test_no_import_cycles():
    """No module imports one that imports it back, directly or through others, counting imports
    inside functions. The root package is left out: it re-exports the API by name (a string map,
    as each subpackage's `lazy_exports`, which ast does not see) and Python imports it before any
    of its modules anyway, so a module importing a submodule from it (`from efficientnet_tf import
    files`) imports that submodule; importing a re-exported name from it would hide the edge, so
    that is not allowed."""
    root = "efficientnet_tf"
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if module != root and isinstance(node, ast.ImportFrom) and node.module == root:
                hidden = [alias.name for alias in node.names if f"{root}.{alias.name}" not in MODULES]
                assert hidden == [], f"{module} imports {hidden} from {root}: import from the module that defines it"
    graph = {module: (_imports(path) & set(MODULES)) - {module, root} for module, path in MODULES.items()
             if module != root}
    cycles = _cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def _import_statements():
    """(where, module, name) for every `from efficientnet_tf... import name` in the repository's
    Python: package, CLI, tests, benchmarks and the notebooks' code cells."""
    sources = [(str(p.relative_to(ROOT)), p.read_text()) for folder in ("efficientnet_tf", "tests", "benchmarks")
               for p in (ROOT / folder).rglob("*.py")] + [("main.py", (ROOT / "main.py").read_text())]
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        sources.append((notebook.name, "\n".join(line for line in code.splitlines() if not line.startswith(("!", "%")))))
    for where, text in sources:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("efficientnet_tf"):
                yield from ((where, node.module, alias.name) for alias in node.names)


def test_every_import_of_the_package_resolves():
    """A moved name breaks a rarely run path (a benchmark mode, a notebook) silently otherwise."""
    missing = []
    for where, module, name in _import_statements():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # this file imports the 0.1 paths on purpose
            imported = importlib.import_module(module)
        is_submodule = hasattr(imported, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
        if not hasattr(imported, name) and not is_submodule:
            missing.append(f"{where}: from {module} import {name}")
    assert missing == []


def test_deploy_does_not_import_the_training_loop():
    for module, path in MODULES.items():
        if module.startswith("efficientnet_tf.deploy"):
            assert "efficientnet_tf.training.loop" not in _imports(path), module


def test_a_saved_keras_model_loads_after_importing_the_package(tmp_path):
    """Names are imported lazily, but the custom layers register with `import efficientnet_tf`."""
    from efficientnet_tf import build_model

    model = build_model("efficientnet-b0", num_classes=3, input_shape=(32, 32, 3))
    model.save(tmp_path / "b0.keras")
    code = ("import efficientnet_tf, keras, numpy as np; "
            f"m = keras.models.load_model({str(tmp_path / 'b0.keras')!r}); "
            "print(m.name, m.predict(np.zeros((1, 32, 32, 3)), verbose=0).shape)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["efficientnet-b0", "(1,", "3)"]


def test_atomic_writes_have_one_implementation():
    """os.replace (the atomic rename; also how things are moved aside) appears only in files.py."""
    users = [m for m, p in MODULES.items() if "os.replace(" in p.read_text()]
    assert users == ["efficientnet_tf.files"], users


def _docstrings(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_library_messages_do_not_name_cli_flags():
    """The library is used without absl: its messages name parameters; main.py adds flag spellings.
    (The one exception is TFDS's own command line, `tfds build NAME --data_dir=DIR`.)"""
    import re

    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value.replace("--data_dir=DIR", "")
                assert not re.search(r"(?<![\w-])--[a-z][a-z_]+", text), (module, node.value)


def test_every_setting_is_a_flag_with_the_declared_default_and_choices():
    """main.py restates nothing: each flag's default, help and choices come from the config."""
    import main
    from efficientnet_tf.deploy.config import ExportConfig
    from efficientnet_tf.settings import settings_of
    from efficientnet_tf.training.config import TrainConfig

    for config_class in (TrainConfig, ExportConfig):
        for setting in settings_of(config_class):
            flag = main.FLAGS[setting.name]
            default = list(setting.default) if setting.kind is tuple else setting.default
            assert flag.default == default, setting.name
            assert setting.help in flag.help, setting.name
            if setting.choices:
                assert f"{', '.join(setting.choices)}." in flag.help, setting.name
    defined_by_hand = [call.args[0].value for call in ast.walk(ast.parse((ROOT / "main.py").read_text()))
                       if isinstance(call, ast.Call) and getattr(call.func, "attr", "").startswith("DEFINE_")
                       and call.args and isinstance(call.args[0], ast.Constant)]
    declared = {s.name for c in (TrainConfig, ExportConfig) for s in settings_of(c)}
    assert set(defined_by_hand) & declared == set(), "main.py defines a config setting by hand"
    assert set(defined_by_hand) <= {"mode", "dry_run", "saved_model", "image", "skip_bad_images", "tf_log_level",
                                    "overwrite", "eval_split"}


def test_flat_settings_round_trip_and_reject_unknown_names():
    from efficientnet_tf.settings import SettingError
    from efficientnet_tf.training.config import TrainConfig

    config = TrainConfig.from_settings(model="efficientnet-lite0", epochs=7, progressive=3, mixup_alpha=0.2)
    assert (config.model.name, config.run.epochs, config.progressive.stages, config.augment.mixup_alpha) == (
        "efficientnet-lite0", 7, 3, 0.2)
    assert TrainConfig.from_settings(**config.settings()) == config
    assert TrainConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config
    assert config.replace(epochs=9).run.epochs == 9 and config.run.epochs == 7
    with pytest.raises(SettingError, match="unknown setting.*epoch_count"):
        TrainConfig.from_settings(epoch_count=3)


def test_old_module_paths_still_import_with_a_warning():
    """0.1's module paths (README snippets and user code of that version) keep working."""
    from efficientnet_tf.data.pipeline import PipelineConfig as moved_pipeline_config
    from efficientnet_tf.files import atomic_write as moved_atomic_write
    from efficientnet_tf.models.configs import custom_config as moved_custom_config
    from efficientnet_tf.training.loop import Trainer
    from efficientnet_tf.training.rundir import load_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("efficientnet_tf.trainer")
        assert old.Trainer is Trainer and old.load_run_config is load_run and old.atomic_write is moved_atomic_write
        from efficientnet_tf.input_pipeline import PipelineConfig  # the README's Data snippet of 0.1
        from efficientnet_tf.builder import custom_config
        from efficientnet_tf.data import DEFAULT_VALIDATION_FRACTION  # data.py's names, now data.sources'

        assert PipelineConfig is moved_pipeline_config and custom_config is moved_custom_config
        assert DEFAULT_VALIDATION_FRACTION == 0.1
    moved = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert any(m.startswith("efficientnet_tf.trainer moved to efficientnet_tf.training.loop") for m in moved), moved
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        old.no_such_name
    assert importlib.import_module("efficientnet_tf.data.pipeline").__spec__.name == "efficientnet_tf.data.pipeline"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("efficientnet_tf.no_such_module")


def test_docs_are_in_the_repository_and_code_points_nowhere_outside():
    assert (ROOT / "docs" / "models.md").exists() and (ROOT / "docs" / "training.md").exists()
    for path in list(PACKAGE.rglob("*.py")) + list(ROOT.glob("*.md")) + list((ROOT / "docs").glob("*.md")):
        text = path.read_text()
        assert "reference.md" not in text and "../shared" not in text, path


def test_run_json_of_the_flat_config_version_still_loads(tmp_path):
    """run.json written before the nested config (0.1, a real file from that version): every
    setting it stored comes back under its section."""
    import shutil

    from efficientnet_tf.training.rundir import load_run

    shutil.copy(pathlib.Path(__file__).parent / "data" / "run_json_v0.1_flat_config.json", tmp_path / "run.json")
    stored = json.loads((tmp_path / "run.json").read_text())["config"]
    config, info = load_run(str(tmp_path))
    settings = config.settings()
    renamed = {"progressive_stages": "progressive"}
    for key, value in stored.items():
        if key != "model_dir":
            assert settings[renamed.get(key, key)] == value, key
    assert config.model_dir == str(tmp_path) and info["image_size"] == 48
    assert config.progressive.stages == 2 and config.augment.mixup_alpha == 0.2
