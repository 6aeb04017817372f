"""Runs a notebook of notebooks/ offline and small: its parameters cell is overridden."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    return nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)


def _execute(name, overrides, workdir):
    notebook = _load(name)
    (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source += "\n# overridden by tests/test_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
    return notebook


def _text(notebook):
    out = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            out.append(output.get("text", "") or str(output.get("data", {}).get("text/plain", "")))
    text = "\n".join(out)
    assert "UnitRangeWarning" not in text  # the notebooks feed 0..255 pixels everywhere
    return text


def check_recognition_notebook(workdir, model_dir, epochs, steps_per_epoch):
    """Notebook 04, run on `model_dir` (trained with its settings, or trained here when empty):
    tests/test_recognition.py runs it on the run its CLI test trained, to spare CI a second one."""
    notebook = _execute("04_recognition.ipynb", dict(EPOCHS=epochs, STEPS_PER_EPOCH=steps_per_epoch,
                                                     FORMATS=["int16x8"], MODEL_DIR=str(model_dir)), workdir)
    text = _text(notebook)
    assert "retrieval_top1: " in text and "tar_at_far_1e-2: " in text and "threshold (best on held-out pairs)" in text
    assert "int16x8" in text and "cos mean" in text and "failed" not in text
    images = sum(1 for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images == 3  # ROC, similarity histograms, history
