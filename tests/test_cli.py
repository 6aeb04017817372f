"""main.py on a plain CPU machine: quiet by default, TensorFlow's lines back when asked for."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a CPU machine printed on every run before: TF's library loading, its CUDA probing and
# matplotlib building its font cache (absl's log handler made that INFO line visible).
NOISE = ("absl::InitializeLog", "port.cc", "cudart_stub", "cuInit", "cuda_platform", "font_manager",
         "generated new fontManager")
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} ", re.MULTILINE)


def _user_environment(**updates):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it
    return dict(env, **updates)


def _summary(tmp_path, *args, **env_updates):
    # An empty MPLCONFIGDIR: matplotlib builds its font cache again, as on a first run.
    env = _user_environment(MPLCONFIGDIR=str(tmp_path / "matplotlib"), **env_updates)
    result = subprocess.run([sys.executable, "main.py", "--mode=summary", "--model=efficientnet-b0", *args],
                            capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "efficientnet-b0" in result.stdout and "5,330,571" in result.stdout
    return result.stderr


def test_default_run_prints_no_tensorflow_startup_noise(tmp_path):
    stderr = _summary(tmp_path)
    assert [word for word in NOISE if word in stderr] == [], stderr
    assert not NATIVE_LOG_LINE.search(stderr), stderr


@pytest.mark.parametrize("how", ["environment", "flag"])
def test_the_users_log_level_wins(tmp_path, how):
    """TF_CPP_MIN_LOG_LEVEL=0 (or --tf_log_level=0) shows TensorFlow's own lines again, down to
    its INFO lines (level 0 only). Which INFO lines depends on the machine: the oneDNN notice
    (port.cc) on some x86 CPUs and not on others, CUDA probing where there is no GPU, device
    creation where there is one."""
    if how == "environment":
        stderr = _summary(tmp_path, TF_CPP_MIN_LOG_LEVEL="0")
    else:
        stderr = _summary(tmp_path, "--tf_log_level=0", TF_CPP_MIN_LOG_LEVEL="3")  # the flag beats the variable
    assert re.search(r"^I\d{4} ", stderr, re.MULTILINE), stderr


def test_log_level_resolution():
    import main

    assert main.tf_log_level(None, {}) == main.DEFAULT_TF_LOG_LEVEL == 3
    assert main.tf_log_level(None, {"TF_CPP_MIN_LOG_LEVEL": "1"}) == 1
    assert main.tf_log_level("0", {"TF_CPP_MIN_LOG_LEVEL": "2"}) == 0
    assert main.tf_log_level(None, {"TF_CPP_MIN_LOG_LEVEL": "verbose"}) is None  # left to TensorFlow


@pytest.mark.parametrize("args, message", [
    (["--validation_fraction=1.5"],
     "--validation_fraction=1.5: validation_fraction must be in (0, 1) or None (the source's default), got 1.5"),
    (["--label_key= "], "--label_key= : label_key must be a feature name such as 'label', got ' '"),
    (["--train_image_size=8"], "--train_image_size=8: train_image_size must be >= 32, got 8"),
    (["--epochs=0"], "--epochs=0: epochs must be >= 1, got 0"),
    (["--optimizer=adam"], "--optimizer=adam: unknown optimizer 'adam'; choose from rmsprop, sgd, adamw"),
    (["--on_bad_image=maybe"], "--on_bad_image=maybe: unknown on_bad_image 'maybe'; choose from error, skip"),
    (["--mode=export", "--int8_io=uint16"], "--int8_io=uint16: unknown int8_io 'uint16'; choose from uint8, int8"),
    (["--progressive=5", "--epochs=3"], "--progressive=5: progressive (5 stages) cannot exceed epochs (3)"),
    (["--quantization_aware_epochs=-1"], "--quantization_aware_epochs=-1: quantization_aware_epochs must be >= 0, got -1"),
    (["--quantization_aware_epochs=3", "--epochs=3"],
     "--quantization_aware_epochs=3: quantization_aware_epochs (3) must be < epochs (3): they fine-tune a trained "
     "network (its BN statistics frozen)"),
    (["--mode=export", "--tflite=float32,int4"],
     "--tflite=float32,int4: unknown tflite 'int4'; choose from float32, float16, dynamic, int8, int16x8, "
     "int8_selective, or none for the SavedModel only"),
    (["--mode=export", "--tflite="],
     "--tflite=: no format given: name TFLite formats (comma-separated: float32, float16, dynamic, int8, "
     "int16x8, int8_selective) or none for the SavedModel only"),
    (["--mode=export", "--tflite=none,int8"],
     "--tflite=none,int8: 'none' (the SavedModel only) cannot be combined with TFLite formats"),
    (["--mode=export", "--check_images=-1"],
     "--check_images=-1: check_images must be >= 0 (0: every image), got -1"),
    (["--mode=export", "--int8_target_agreement=1.5"],
     "--int8_target_agreement=1.5: int8_target_agreement is a share of images, in (0, 1]; got 1.5"),
    (["--mode=export", "--int8_target_agreement=0"],
     "--int8_target_agreement=0.0: int8_target_agreement is a share of images, in (0, 1]; got 0.0"),
    (["--mode=export", "--tflite=int8", "--int8_target_agreement=0.9"],
     "--int8_target_agreement=0.9: int8_target_agreement is the agreement int8_selective searches for, and the "
     "TFLite formats do not include int8_selective"),
    (["--mode=export", "--tflite=int8", "--int8_keep_float=^stem_"],
     "--int8_keep_float=^stem_: int8_keep_float names the layers int8_selective keeps in float, and the TFLite "
     "formats do not include int8_selective"),
    (["--mode=export", "--tflite=int8_selective", "--int8_keep_float=stem_(conv"],
     "--int8_keep_float=stem_(conv: int8_keep_float 'stem_(conv' is not a regular expression: missing ), "
     "unterminated subpattern at position 5"),
    (["--mode=export", "--tflite=int8_selective", "--int8_selective_search=head"],
     "--int8_selective_search=head: unknown int8_selective_search 'head'; choose from dynamic_head, float_tail"),
    (["--mode=export", "--tflite=int8", "--int8_selective_search=float_tail"],
     "--int8_selective_search=float_tail: int8_selective_search says how int8_selective searches, and the TFLite "
     "formats do not include int8_selective"),
    (["--mode=export", "--tflite=int8_selective", "--int8_selective_search="],
     "--int8_selective_search=: int8_selective_search names no search; choose from dynamic_head, float_tail"),
])
def test_bad_new_flags_fail_with_one_line(args, message, tmp_path):
    result = subprocess.run([sys.executable, "main.py", f"--model_dir={tmp_path}", *args], capture_output=True,
                            text=True, timeout=120, cwd=ROOT, env=_user_environment())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]


@pytest.mark.parametrize("what", ["missing", "file"])
def test_a_model_dir_that_is_not_a_directory_is_one_line_saying_which(what, tmp_path):
    path = tmp_path / "README.md"
    if what == "file":
        path.write_text("not a run")
    result = subprocess.run([sys.executable, "main.py", "--mode=export", f"--model_dir={path}"], capture_output=True,
                            text=True, timeout=120, cwd=ROOT, env=_user_environment())
    said = "is a file, not a directory" if what == "file" else "does not exist"
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: model_dir '{path}' {said}: pass --model_dir of a training run"]