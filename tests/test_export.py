import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from cli import run_main
import tensorflow as tf
from PIL import Image

from efficientnet_tf import files
from efficientnet_tf.deploy import calibration, export
from efficientnet_tf.data.pipeline import preprocess_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_main(*args):
    return run_main(*args)


def test_training_run_writes_plots_and_confusion_matrix(tiny_run):
    model_dir, report = tiny_run
    for name in ("history.png", "lr_schedule.png", "confusion_matrix.png", "augmented_images.png"):
        with open(os.path.join(model_dir, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    matrix = np.load(os.path.join(model_dir, "confusion_matrix.npy"))
    assert matrix.shape == (10, 10) and matrix.sum() == report["images"] == 360
    assert np.trace(matrix) / matrix.sum() == pytest.approx(report["top1"])


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    model_dir, _ = tiny_run
    export_dir = str(tmp_path_factory.mktemp("export") / "out")
    # Target 1.0: the barely trained model's int8 cannot reach it untouched, so the search keeps ops in
    # float (the tail search alone here; the head search has its own test).
    report = export.export_run(model_dir, export_dir=export_dir, tflite=["float32", "int8", "int8_selective"],
                               onnx=True, int8_target_agreement=1.0, int8_selective_search=["float_tail"],
                               calibration_images=32, check_images=64, search_images=96)
    return model_dir, export_dir, report


def test_saved_model_matches_keras_with_ema_weights(exported):
    model_dir, export_dir, report = exported
    model, info = export.load_trained_model(model_dir)
    raw, _ = export.load_trained_model(model_dir, use_ema=False)
    assert report["ema"] and info["ema"]
    images, _ = calibration.pipeline_images(model_dir, 16, training=False)
    expected = tf.nn.softmax(model(images, training=False)).numpy()
    assert np.abs(expected - tf.nn.softmax(raw(images, training=False)).numpy()).max() > 1e-4  # EMA != raw
    loaded = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
    assert set(loaded.signatures) == {"serving_default", "serving_bytes"}
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    ids = out["top_k_ids"].numpy()
    np.testing.assert_array_equal(ids[:, 0], expected.argmax(-1))
    names = np.array(info["class_names"])[ids]
    np.testing.assert_array_equal(out["top_k_names"].numpy().astype(str), names)
    np.testing.assert_allclose(out["top_k_probabilities"].numpy(), np.take_along_axis(expected, ids, -1), atol=1e-5)
    assert out["top_k_ids"].shape == (16, 5)
    with open(os.path.join(export_dir, "saved_model", "labels.txt")) as f:
        assert f.read().split("\n")[:10] == info["class_names"]


def test_bytes_signature_decodes_and_preprocesses_in_graph(exported):
    _, export_dir, _ = exported
    loaded = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)]
    encoded = []
    for picture, fmt in zip(pictures, ("PNG", "JPEG")):
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format=fmt)
        encoded.append(buffer.getvalue())
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(encoded))
    decoded = [tf.io.decode_image(data, channels=3) for data in encoded]
    images = tf.stack([preprocess_eval(image, 32) for image in decoded])
    reference = loaded.signatures["serving_default"](images=images)
    np.testing.assert_allclose(out["probabilities"].numpy(), reference["probabilities"].numpy(), atol=1e-6)


def test_tflite_files_run_and_report_agreement(exported):
    model_dir, export_dir, report = exported
    with open(os.path.join(export_dir, "export_report.json")) as f:
        on_disk = json.load(f)
    assert set(on_disk["tflite"]) == {"float32", "int8", "int8_selective", "keras_float32"}
    float32, int8 = on_disk["tflite"]["float32"], on_disk["tflite"]["int8"]
    assert float32["agreement"] >= 0.99 and float32["io"] == "float32 in / float32 out"
    assert int8["io"] == "uint8 in / uint8 out" and int8["images"] == 64
    assert int8["size_bytes"] == os.path.getsize(os.path.join(export_dir, "model_int8.tflite"))
    assert int8["size_bytes"] < 0.4 * float32["size_bytes"]
    # The runner itself: float TFLite gives the Keras probabilities.
    model, _ = export.load_trained_model(model_dir)
    images, _ = calibration.pipeline_images(model_dir, 8, training=False)
    runner = export.TFLiteRunner(os.path.join(export_dir, "model_float32.tflite"))
    np.testing.assert_allclose(runner(images), tf.nn.softmax(model(images)).numpy(), atol=1e-4)


def test_replace_directory_keeps_the_previous_directory_on_failure_and_sets_it_aside_on_success(tmp_path):
    destination = tmp_path / "export"
    destination.mkdir()
    (destination / "good.txt").write_text("previous export")

    def failing_build(path):
        with open(os.path.join(path, "partial.bin"), "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.replace_directory(failing_build, str(destination))
    assert os.listdir(destination) == ["good.txt"] and sorted(os.listdir(tmp_path)) == ["export"]

    path, moved = files.replace_directory(lambda path: open(os.path.join(path, "new.txt"), "w").close(),
                                           str(destination))
    assert os.listdir(destination) == ["new.txt"] and moved == f"{destination}.replaced-1"
    assert (tmp_path / "export.replaced-1" / "good.txt").read_text() == "previous export"  # renamed, not deleted
    assert sorted(os.listdir(tmp_path)) == ["export", "export.replaced-1"]


def test_bad_export_requests(tmp_path, tiny_run):
    with pytest.raises(FileNotFoundError, match="not a training run directory"):
        export.export_run(str(tmp_path))
    empty = tmp_path / "run"
    empty.mkdir()
    with open(os.path.join(tiny_run[0], "run.json")) as f:
        (empty / "run.json").write_text(f.read())
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        export.export_run(str(empty))
    with pytest.raises(ValueError, match="unknown tflite 'int4'; choose from float32, float16, dynamic, int8, "
                       "int16x8, int8_selective"):
        export.export_run(tiny_run[0], tflite=["int4"])
    for target in (0, -0.5, 1.01):
        with pytest.raises(ValueError, match=rf"int8_target_agreement is a share of images, in \(0, 1\]; got {target}"):
            export.export_run(tiny_run[0], tflite=["int8_selective"], int8_target_agreement=target)


@pytest.mark.slow
def test_cli_export_plot_and_predict(tiny_run, tmp_path):
    model_dir, _ = tiny_run
    export_dir = str(tmp_path / "cli_export")
    result = _run_main("--mode=export", f"--model_dir={model_dir}", f"--export_dir={export_dir}", "--tflite=none")
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.exists(os.path.join(export_dir, "saved_model", "saved_model.pb"))

    result = _run_main("--mode=plot", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.join(model_dir, "history.png") in result.stdout

    digit = tmp_path / "digit.png"
    Image.fromarray(np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((4, 4), np.uint8))).convert("RGB").save(digit)
    result = _run_main("--mode=predict", f"--saved_model={os.path.join(export_dir, 'saved_model')}", f"--image={digit}",
                       str(digit))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines.count(str(digit)) == 2 and sum(line.strip().startswith(("1.", "5.")) for line in lines) == 4
    probabilities = [float(line.split()[-1]) for line in lines if line.startswith("  ")]
    assert all(0 <= p <= 1 for p in probabilities) and probabilities[:5] == sorted(probabilities[:5], reverse=True)

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    # The image is named before any model is looked for: this model_dir does not even exist.
    result = _run_main("--mode=predict", f"--model_dir={tmp_path / 'no_such_run'}", f"--image={bad}")
    assert result.returncode == 2 and f"cannot read image {str(bad)!r}" in result.stderr
    result = _run_main("--mode=export", f"--model_dir={model_dir}", "--tflite=int3")
    assert result.returncode == 2 and "error: --tflite=int3: unknown tflite 'int3'" in result.stderr


def test_tflite_export_without_the_run_dataset_says_what_works(run_copy, tmp_path):
    """The run's data is gone (a folder deleted after training): the error names both ways out,
    and calibration_dataset makes the export work on other images (agreement only, no top-1)."""
    import pathlib

    run = pathlib.Path(run_copy)
    info = json.loads((run / "run.json").read_text())
    info["config"]["data"]["dataset"] = f"folder:{tmp_path / 'deleted_images'}"
    (run / "run.json").write_text(json.dumps(info))
    ways_out = r"Export the SavedModel only .*no ONNX.*calibration_dataset \(.*only: glyphs\)"
    with pytest.raises(FileNotFoundError, match=ways_out):
        export.export_run(str(run), tflite=["float32"])
    report = export.export_run(str(run), tflite=["float32"], calibration_dataset="synthetic", check_images=16)
    entry = report["tflite"]["float32"]
    assert entry["images"] == 16 and entry["agreement"] >= 0.9 and "top1" not in entry
    # A dataset that holds identities only (glyphs) calibrates as well: its images, not its classes.
    report = export.export_run(str(run), tflite=["float32"], calibration_dataset="glyphs", check_images=16)
    entry = report["tflite"]["float32"]
    assert entry["images"] == 16 and entry["max_abs_prob_diff"] < 1e-4 and "top1" not in entry


def test_a_run_without_dropout_or_stochastic_depth_loads_for_export(tmp_path):
    """At rate 0 those layers do not exist; the loaded model must be built the same way (it was
    built with the variant's defaults, and no checkpoint of such a run could be exported)."""
    from efficientnet_tf.deploy.export import load_trained_model
    from efficientnet_tf.training import TrainConfig, Trainer

    config = TrainConfig.from_settings(model="efficientnet-lite0", dataset="digits", image_size=32, epochs=1,
                                       steps_per_epoch=2, batch_size=16, seed=0, dropout_rate=0.0,
                                       drop_connect_rate=0.0, model_dir=str(tmp_path / "run"))
    trainer = Trainer(config, verbose=False)
    trainer.fit(validate=False)
    model, info = load_trained_model(str(tmp_path / "run"), use_ema=False)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model(images, training=False), trainer.model(images, training=False), atol=1e-5)


def _tensor_types(path):
    from ai_edge_litert.interpreter import Interpreter

    return {t["name"]: np.dtype(t["dtype"]).name for t in Interpreter(model_path=path).get_tensor_details()}


def test_int8_layer_errors_are_per_op_in_network_order(exported):
    model_dir, export_dir, report = exported
    errors = report["int8_layer_errors"]
    model, _ = export.load_trained_model(model_dir)
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    layers = [e["layer"] for e in errors if e["layer"] != "probabilities"]
    assert set(layers) <= set(order), set(layers) - set(order)
    positions = [order[name] for name in layers]
    assert positions == sorted(positions)  # network order
    blocks = {name.split("_")[0] for name in order if re.match(r"block\d+[a-z]_", name)}
    assert len(blocks) == 16 and blocks | {"stem", "top", "predictions"} <= {name.split("_")[0] for name in layers}
    assert [e["index"] for e in errors] == list(range(len(errors)))
    # Each op's own error, not an accumulation: uniform rounding of a value to a step gives an
    # RMSE of step/sqrt(12), and most ops sit there.
    ratios = np.array([e["rmse_over_scale"] for e in errors if e["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D")])
    assert 0.8 / np.sqrt(12) < np.median(ratios) < 1.5 / np.sqrt(12), np.median(ratios)
    for e in errors:
        assert e["rmse_over_scale"] == pytest.approx(e["rmse"] / e["scale"])
    with open(os.path.join(export_dir, export.LAYER_ERRORS_PNG), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_selective_int8_keeps_the_end_of_the_network_in_float(exported):
    _, export_dir, report = exported
    selective = report["int8_selective"]
    candidates = sorted((e for e in report["int8_layer_errors"] if e["op"] not in ("QUANTIZE", "DEQUANTIZE")),
                        key=lambda e: e["index"])
    kept = [e["tensor"] for e in selective["kept_float"]]
    assert selective["float_ops"] == len(kept) >= 1
    assert kept == [e["tensor"] for e in candidates[len(candidates) - len(kept):]]  # a tail, in network order
    assert selective["first_float_layer"] == selective["kept_float"][0]["layer"]
    assert selective["float_ops"] + selective["quantized_ops"] == len(candidates)
    steps = {s["float_ops"]: s["agreement"] for s in selective["steps"]}
    assert steps[selective["float_ops"]] == selective["search_agreement"] and selective["search_images"] == 96
    target = selective["target_agreement"]
    if selective["target_met"]:
        assert selective["search_agreement"] >= target
        assert all(a < target for count, a in steps.items() if count < selective["float_ops"])
    else:
        assert "reason" in selective and max(steps.values()) == selective["search_agreement"]
    # In the files: the kept ops compute in float, the same ops of full int8 in integers.
    selective_types = _tensor_types(os.path.join(export_dir, "model_int8_selective.tflite"))
    int8_types = _tensor_types(os.path.join(export_dir, "model_int8.tflite"))
    shared = [t for t in kept if t in selective_types and t in int8_types]
    assert len(shared) >= len(kept) // 2, "kept tensors not found by name in the TFLite files"
    assert {selective_types[t] for t in shared} == {"float32"}
    assert {int8_types[t] for t in shared} <= {"int8", "uint8", "int32"}
    first_int8 = candidates[len(candidates) - len(kept) - 1]["tensor"]  # the op before the tail stays int8
    assert selective_types.get(first_int8, "int8") in ("int8", "int32")


def test_selective_int8_head_search_runs_the_first_ops_outside_static_int8(tiny_run, tmp_path):
    model_dir, _ = tiny_run
    out = str(tmp_path / "out")
    report = export.export_run(model_dir, export_dir=out, tflite=["float32", "int8_selective"],
                               int8_selective_search=["dynamic_head"], int8_target_agreement=1.0,
                               calibration_images=32, check_images=64, search_images=96)
    assert not report.get("failed"), report.get("failed")
    selective = report["int8_selective"]
    assert selective["method"] == "dynamic_head" and selective["quantizer"] == "ai-edge-quantizer"
    steps = {s["dynamic_ops"]: s["agreement"] for s in selective["steps"]}
    assert {s["method"] for s in selective["steps"]} == {"dynamic_head"} and list(steps)[:3] == [0, 1, 2]
    count, target = selective["dynamic_ops"], selective["target_agreement"]
    assert steps[count] == selective["search_agreement"] and max(steps) <= selective["graph_ops"] // 2
    if selective["target_met"]:
        assert selective["search_agreement"] >= target and all(a < target for c, a in steps.items() if c < count)
    else:
        assert max(steps.values()) == selective["search_agreement"] and "dynamic-range head" in selective["reason"]
    assert report["tflite"]["int8_selective"]["images"] == 64  # checked like every format, on other images
    # In the file (tensors named as in the float graph): the head's outputs are float, the ops after it int8.
    float_graph = _tensor_types(os.path.join(out, "model_float32.tflite"))
    types = _tensor_types(os.path.join(out, "model_int8_selective.tflite"))
    outputs = [[name for name in float_graph if op["tensor"] == name + ";"] for op in selective["dynamic_head"]]
    head = [names[0] for names in outputs if names]
    assert len(head) == count and {types[name] for name in head} <= {"float32"}
    from efficientnet_tf.deploy.quantization import DynamicHeadInt8

    with open(os.path.join(out, "model_float32.tflite"), "rb") as f:
        ops = DynamicHeadInt8(f.read(), np.zeros((1, 32, 32, 3), np.float32)).ops
    after = [op for op in ops[count:] if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D")][0]
    assert types[after.scope[:-1]] == "int8", after  # the first convolution after the head: static int8
    assert [op["tensor"] for op in selective["dynamic_head"]] == [op.scope for op in ops[:count]]


@pytest.mark.slow
def test_int8_keep_float_keeps_the_named_layers_in_float_in_the_file(tiny_run, tmp_path):
    model_dir, _ = tiny_run
    head = "^(rescaling|normalization|stem_)"  # the input's scaling and the stem
    report = export.export_run(model_dir, export_dir=str(tmp_path / "out"), tflite=["int8_selective"],
                               int8_keep_float=head, int8_target_agreement=0.01, int8_selective_search=["float_tail"],
                               calibration_images=32,
                               check_images=32, search_images=32)
    assert not report.get("failed"), report.get("failed")
    selective = report["int8_selective"]
    candidates = sorted((e for e in report["int8_layer_errors"] if e["op"] not in ("QUANTIZE", "DEQUANTIZE")),
                        key=lambda e: e["index"])
    named = [e["tensor"] for e in candidates if re.search(head, e["layer"])]
    # Lite0: the input's scaling (MUL, ADD) and the stem conv, its BN and ReLU6 fused into one op.
    assert [e["layer"] for e in candidates[:len(named)]] == ["rescaling", "rescaling", "stem_activation"]
    # Any agreement meets the target 0.01: the named ops alone, no searched tail.
    assert selective["float_by_setting"] == selective["float_ops"] == len(named) and selective["target_met"]
    assert [e["tensor"] for e in selective["kept_float"]] == named and selective["first_float_layer"] is None
    types = _tensor_types(os.path.join(str(tmp_path / "out"), "model_int8_selective.tflite"))
    assert {types[t] for t in named if t in types} == {"float32"} and sum(t in types for t in named) >= len(named) // 2
    after = candidates[len(named)]  # the first op after the head (block1a's depthwise conv) is int8
    assert not re.search(head, after["layer"]) and types.get(after["tensor"]) == "int8", after


def test_int8_keep_float_that_names_no_layer_or_every_layer_fails_before_anything_is_written(tiny_run, tmp_path):
    """Checked against the model's layer names right after loading it: no SavedModel, no conversion,
    and the message lists the layer groups there are (Lite0's, from its Keras model)."""
    import keras

    from efficientnet_tf.settings import SettingError

    model_dir, _ = tiny_run
    model, _ = export.load_trained_model(model_dir)
    groups = list(dict.fromkeys(layer.name.split("_")[0] + ("_*" if "_" in layer.name else "")
                                for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)))
    assert groups[:2] == ["rescaling", "stem_*"] and "block7a_*" in groups  # Lite0: rescaling to [-1, 1], no normalization
    out = tmp_path / "out"
    with pytest.raises(SettingError, match=re.escape(f"matches none of the model's") + r" \d+ layers: "
                       + re.escape(", ".join(groups)) + "$"):
        export.export_run(model_dir, export_dir=str(out), tflite=["int8_selective"], int8_keep_float="^stem_conv2")
    with pytest.raises(SettingError, match="matches every layer of the model: nothing would be int8"):
        export.export_run(model_dir, export_dir=str(out), tflite=["int8_selective"], int8_keep_float="")
    assert list(tmp_path.iterdir()) == []  # no export directory, no staging directory beside it


def test_onnx_export_matches_keras(exported):
    import onnx
    import onnxruntime

    model_dir, export_dir, report = exported
    path = os.path.join(export_dir, "model.onnx")
    entry = report["onnx"]
    assert entry["size_bytes"] == os.path.getsize(path) and entry["opset"] == 18
    assert entry["max_abs_prob_diff"] <= 1e-4 and entry["eval_agreement"] == 1.0 and entry["agreement"] == 1.0
    assert {o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx")} == {18}
    model, _ = export.load_trained_model(model_dir)
    images, _ = calibration.pipeline_images(model_dir, 16, training=False)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": images})
    np.testing.assert_allclose(out, tf.nn.softmax(model(images)).numpy(), atol=1e-4)


def test_agreement_counts_every_image_and_top1_only_the_eval_split(exported):
    from sklearn.datasets import load_digits

    from efficientnet_tf.training.rundir import load_run

    model_dir, export_dir, _ = exported
    config, _ = load_run(model_dir)
    source = config.load_source("skip")
    check = export.check_images_of(source, 32, 0, count=0)
    assert len(check.images) == len(load_digits().images) == 1797
    eval_images, eval_labels = calibration.pipeline_images(model_dir, 10**9, training=False)
    assert check.num_eval == len(eval_images) == 360
    np.testing.assert_array_equal(check.images[:360], eval_images)
    np.testing.assert_array_equal(check.eval_labels, eval_labels)
    some = export.check_images_of(source, 32, 0, count=400)
    assert some.num_eval == 360 and some.images.shape == (400, 32, 32, 3)
    np.testing.assert_array_equal(some.images[360:], check.images[360:400])  # then training images, in order

    model, _ = export.load_trained_model(model_dir)
    report = export.agreement_report(model, {"float32": os.path.join(export_dir, "model_float32.tflite")},
                                     check.images, check.eval_labels, num_eval=check.num_eval)
    keras_top1 = np.argmax(model.predict(check.images, verbose=0), -1)
    float32 = report["float32"]
    assert (float32["images"], float32["eval_images"]) == (1797, 360)
    assert report["keras_float32"]["top1"] == pytest.approx(np.mean(keras_top1[:360] == eval_labels))
    assert float32["top1_change"] == pytest.approx(float32["top1"] - report["keras_float32"]["top1"])
    assert float32["agreement"] >= 0.999 and float32["max_abs_prob_diff"] < 1e-4


def test_check_images_zero_refuses_a_dataset_that_does_not_fit_in_memory(tiny_run):
    from efficientnet_tf.training.rundir import load_run

    config, _ = load_run(tiny_run[0])
    with pytest.raises(ValueError, match=r"check_images=0 would hold 1,797 images of 1024x1024 in memory \(more "
                                         r"than 4 GB\); give a count, e.g. 2000"):
        export.check_images_of(config.load_source("skip"), 1024, 0, count=0)


def test_a_failed_format_is_reported_and_the_others_are_written(run_copy, tmp_path, monkeypatch):
    destination = tmp_path / "export"

    def crash(*args, **kwargs):
        raise RuntimeError("converter crashed\nsecond line")

    monkeypatch.setattr(export, "convert_onnx", crash)
    report = export.export_run(run_copy, export_dir=str(destination), tflite=["float32"], onnx=True, check_images=16)
    assert report["failed"] == {"onnx": "RuntimeError: converter crashed"} and "onnx" not in report
    assert sorted(os.listdir(destination)) == ["export_report.json", "model_float32.tflite", "saved_model"]
    with open(destination / "export_report.json") as f:
        assert json.load(f)["failed"] == report["failed"]


def test_cli_exits_1_naming_a_failed_format_and_writes_the_others(run_copy):
    """main.py with the float16 converter failing (patched in the process main.py runs in): exit
    status 1, one line naming the format and why, no traceback; the other formats are written."""
    code = ("import runpy, sys\n"
            "from efficientnet_tf.deploy import export\n"
            "real = export.convert_saved_model\n"
            "def convert(model, quantization, *args):\n"
            "    if quantization == 'float16':\n"
            "        raise RuntimeError('converter crashed\\nsecond line')\n"
            "    return real(model, quantization, *args)\n"
            "export.convert_saved_model = convert\n"
            f"sys.argv = ['main.py', '--mode=export', '--model_dir={run_copy}', '--tflite=float32,float16', "
            "'--check_images=16']\n"
            "runpy.run_path('main.py', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: not exported: float16 (RuntimeError: converter crashed); everything else was written")
    assert "Traceback" not in result.stderr
    destination = os.path.join(run_copy, "export")
    assert sorted(os.listdir(destination)) == ["export_report.json", "model_float32.tflite", "saved_model"]
    with open(os.path.join(destination, "export_report.json")) as f:
        written = json.load(f)
    assert written["failed"] == {"float16": "RuntimeError: converter crashed"} and set(written["tflite"]) == {"float32", "keras_float32"}
    assert "float32" in result.stdout and "float16" not in result.stdout


def test_onnx_without_its_extra_says_how_to_install(monkeypatch, tiny_run, tmp_path):
    import importlib.util

    from efficientnet_tf.deploy.config import ExportConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    with pytest.raises(ValueError, match=r"ONNX export needs tf2onnx: pip install tf2onnx onnx onnxruntime \(in a "
                                         r"checkout: pip install -e '.\[onnx\]'\)"):
        ExportConfig(onnx=True).validate()
    with pytest.raises(ValueError, match="ONNX export needs tf2onnx"):
        export.export_run(tiny_run[0], export_dir=str(tmp_path / "out"), onnx=True)
    assert not os.path.exists(tmp_path / "out")


def test_without_ai_edge_quantizer_int8_selective_searches_the_tail_and_says_why(monkeypatch, tiny_run, tmp_path):
    import sys

    from efficientnet_tf.deploy.config import ExportConfig

    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)  # what an install without the package sees
    with pytest.raises(ValueError, match=r"int8_selective_search=dynamic_head needs ai-edge-quantizer: pip install "
                                         r"ai-edge-quantizer \(in a checkout: pip install -e '.\[tflite\]'\)"):
        ExportConfig(tflite=["int8_selective"], int8_selective_search=["dynamic_head"]).validate()
    report = export.export_run(tiny_run[0], export_dir=str(tmp_path / "out"), tflite=["int8_selective"],
                               int8_target_agreement=0.01, calibration_images=32, check_images=32, search_images=32)
    selective = report["int8_selective"]
    assert not report.get("failed") and selective["method"] == "float_tail" and selective["target_met"]
    assert {s["method"] for s in selective["steps"]} == {"float_tail"}
    assert selective["head_search_skipped"].startswith("ai-edge-quantizer is not installed")
