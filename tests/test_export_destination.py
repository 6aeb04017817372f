"""An export deletes and overwrites nothing it did not write (issue: your files are never destroyed).

Every test plants a user's file where a careless export would hit it and checks it byte for byte."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
from cli import run_main

from efficientnet_tf.deploy import export
from efficientnet_tf.deploy.destination import ExportInterrupted
from efficientnet_tf.settings import SettingError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(folder) -> dict:
    """{relative path: SHA-256} of every file below `folder`: what must survive unchanged."""
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def _plant(path, content=b"a user's own file\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_a_folder_of_other_files_is_refused_before_any_work(run_copy, tmp_path):
    mine = tmp_path / "mine"
    _plant(mine / "notes.txt")
    before, beside = _snapshot(tmp_path), sorted(os.listdir(tmp_path))
    with pytest.raises(SettingError, match=r"mine holds files that are not an export \(notes.txt\): nothing was "
                                           r"written; give a new or empty directory, or an earlier export of this run"):
        export.export_run(run_copy, export_dir=str(mine), tflite=[])
    assert _snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == beside  # no staging left either


def test_the_run_the_current_and_home_directories_and_their_parents_are_refused(run_copy, tmp_path, monkeypatch):
    work, home = tmp_path / "work", tmp_path / "home"
    _plant(work / "data.csv")
    _plant(home / ".bashrc")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    before = _snapshot(tmp_path)
    refused = {run_copy: "is the run's own directory", str(tmp_path): "holds the run",
               os.path.join(run_copy, ".."): "holds the run", ".": "is the current directory",
               str(home): "is the home directory", "/": "is the root directory",
               os.path.join(run_copy, "run.json"): "is a file, not a directory"}
    for export_dir, why in refused.items():
        with pytest.raises(SettingError, match=why):
            export.export_run(run_copy, export_dir=export_dir, tflite=[])
    assert _snapshot(tmp_path) == before


def test_a_re_export_keeps_what_it_does_not_rewrite_and_sets_aside_what_is_in_its_way(run_copy):
    first = export.export_run(run_copy, tflite=["float32"], check_images=16)
    destination = first["export_dir"]
    assert destination == os.path.join(run_copy, "export")
    listed = first["files"]
    assert set(listed) == set(_snapshot(destination)) - {"export_report.json"}  # every file, and only those
    assert all(entry["checkpoint"] == first["checkpoint"] for entry in listed.values())
    assert listed["model_float32.tflite"]["sha256"] == _snapshot(destination)["model_float32.tflite"]
    float32 = (_snapshot(destination)["model_float32.tflite"], first["tflite"]["float32"])
    # The user adds notes, and puts a file of their own where the next export writes one.
    notes = _plant(pathlib.Path(destination) / "notes.txt", b"my notes\n")
    _plant(notes.parent / "model_float16.tflite", b"my own float16 model\n")

    second = export.export_run(run_copy, tflite=["float16"], check_images=16)
    now = _snapshot(destination)
    assert now["model_float32.tflite"] == float32[0] and notes.read_bytes() == b"my notes\n"
    assert (notes.parent / "model_float16.tflite.replaced-1").read_bytes() == b"my own float16 model\n"
    assert second["moved_aside"] == ["model_float16.tflite.replaced-1"]
    assert second["kept"] == ["model_float32.tflite"]
    assert second["files"]["model_float32.tflite"]["checkpoint"] == first["checkpoint"]
    assert second["tflite"]["float32"] == dict(float32[1], checkpoint=first["checkpoint"])  # its figures stay
    assert "float16" in second["tflite"] and "checkpoint" not in second["tflite"]["float16"]
    assert second["other_files"] == ["model_float16.tflite.replaced-1", "notes.txt"]
    assert set(second["files"]) | set(second["other_files"]) | {"export_report.json"} == set(now)
    with open(os.path.join(destination, "export_report.json")) as f:
        assert json.load(f)["files"] == second["files"]


def test_a_failed_or_interrupted_export_leaves_the_previous_one_as_it_was(run_copy, tmp_path, monkeypatch):
    destination = str(tmp_path / "out")
    export.export_run(run_copy, export_dir=destination, tflite=[])
    _plant(tmp_path / "out" / "notes.txt")
    before, beside = _snapshot(tmp_path), sorted(os.listdir(tmp_path))

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "export_saved_model", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_run(run_copy, export_dir=destination, tflite=[])
    assert _snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == beside

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_saved_model", interrupt)
    with pytest.raises(ExportInterrupted, match=f"^stopped: nothing was exported; {destination} is as it was$"):
        export.export_run(run_copy, export_dir=destination, tflite=[])
    assert _snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == beside


def test_an_export_from_before_the_file_list_is_set_aside_not_overwritten(run_copy, tmp_path):
    """An export written before reports listed their files cannot prove which files are its own:
    what the new export writes over is renamed, nothing is deleted."""
    destination = tmp_path / "out"
    report = export.export_run(run_copy, export_dir=str(destination), tflite=[])
    old_report = {key: value for key, value in report.items() if key not in ("files", "model_dir", "export_dir")}
    (destination / "export_report.json").write_text(json.dumps(old_report))
    before = _snapshot(destination / "saved_model")
    again = export.export_run(run_copy, export_dir=str(destination), tflite=[])
    assert _snapshot(destination / "saved_model.replaced-1") == before
    assert again["moved_aside"] == ["saved_model.replaced-1"]


def test_another_runs_export_is_refused(run_copy, tiny_run, tmp_path):
    destination = str(tmp_path / "out")
    export.export_run(tiny_run[0], export_dir=destination, tflite=[])
    with pytest.raises(SettingError, match=f"holds an export of another run \\({tiny_run[0]}\\)"):
        export.export_run(run_copy, export_dir=destination, tflite=[])


def _main(*args, code=None):
    if not code:
        return run_main(*args)
    # Ctrl-C in a process of its own: the exit status is the point.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_cli_says_one_line_for_a_refused_directory_and_for_ctrl_c(run_copy, tmp_path):
    mine = tmp_path / "mine"
    _plant(mine / "notes.txt")
    result = _main("--mode=export", f"--model_dir={run_copy}", f"--export_dir={mine}", "--tflite=none")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --export_dir={mine}: {mine} holds files that are not an export (notes.txt): nothing was written; "
        "give a new or empty directory, or an earlier export of this run (the default is the run's export/ folder)")
    assert (mine / "notes.txt").read_bytes() == b"a user's own file\n"

    destination = tmp_path / "new"
    code = ("import runpy, sys\n"
            "from efficientnet_tf.deploy import export\n"
            "def interrupt(*args, **kwargs):\n"
            "    raise KeyboardInterrupt\n"
            "export.export_saved_model = interrupt\n"
            f"sys.argv = ['main.py', '--mode=export', '--model_dir={run_copy}', '--export_dir={destination}', "
            "'--tflite=none']\n"
            "runpy.run_path('main.py', run_name='__main__')\n")
    result = _main(code=code)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == f"stopped: nothing was exported; {destination} was not created"
    assert not destination.exists() and sorted(os.listdir(tmp_path)) == ["mine", "run"]


def test_files_kept_from_another_checkpoint_are_a_warning_naming_the_flags(run_copy, tmp_path):
    import main

    destination = tmp_path / "out"
    first = export.export_run(run_copy, export_dir=str(destination), tflite=["float32"], check_images=16)
    older = first["checkpoint"].replace("ckpt-2", "ckpt-1")  # as if exported before the run was extended
    assert older != first["checkpoint"]
    stored = json.loads((destination / "export_report.json").read_text())
    stored["files"]["model_float32.tflite"]["checkpoint"] = older
    (destination / "export_report.json").write_text(json.dumps(stored))

    from efficientnet_tf.deploy.config import ExportConfig

    settings = ExportConfig(export_dir=str(destination), tflite=())
    second = export.export_run(run_copy, config=settings)
    assert second["kept"] == second["kept_from_other_checkpoints"] == ["model_float32.tflite"]
    assert main.kept_lines(second, settings) == [
        "warning: kept from an earlier export of another checkpoint (ckpt-1; this export is ckpt-2): "
        "model_float32.tflite. To export them from this checkpoint too: --tflite=float32"]


def test_a_failure_while_moving_the_new_export_in_puts_the_previous_one_back(run_copy, tmp_path, monkeypatch):
    from efficientnet_tf.deploy import destination

    out = tmp_path / "out"
    export.export_run(run_copy, export_dir=str(out), tflite=[])
    before, beside = _snapshot(tmp_path), sorted(os.listdir(tmp_path))
    real = destination.files.move_into_place

    def fail_for_new_files(source, path):
        if ".tmp-" in str(source):  # a staged file of the new export: after the earlier ones were moved out
            raise OSError("disk went away")
        return real(source, path)

    monkeypatch.setattr(destination.files, "move_into_place", fail_for_new_files)
    with pytest.raises(OSError, match="disk went away"):
        export.export_run(run_copy, export_dir=str(out), tflite=[])
    assert _snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == beside
