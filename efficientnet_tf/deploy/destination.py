"""Where an export may be written, and how a new export joins an earlier one without losing a file.

An export directory is new, empty, or an earlier export of the same run: its `export_report.json`
lists every file the export wrote (`files`: path -> checkpoint, size, SHA-256). Anything else is
refused before any work: a directory of other files, the run's own directory or a folder holding
it, the current directory, the home directory, `/` and the folders above them.

A new export is built in a staging directory beside the destination and moved in at the end:
- what it writes replaces the earlier export's file of the same name only where that file is
  provably the earlier export's (same SHA-256 as its report says); any other file in the way is
  renamed `<name>.replaced-N`, never overwritten;
- what it does not rewrite stays, and the report lists it with the checkpoint it came from;
- a failure or Ctrl-C before the move leaves the earlier export exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

from efficientnet_tf import files
from efficientnet_tf.settings import SettingError

REPORT = "export_report.json"
# Sections of the report that describe one file each, by the file's name (kept with the file).
_FILE_SECTIONS = {"onnx": "model.onnx", "int8_selective": "model_int8_selective.tflite",
                  "int8_layer_errors": "int8_layer_errors.png"}


class ExportInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during an export; the message says what became of the destination."""


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def relative_files(root: str) -> list[str]:
    """Every file below `root`, relative to it with / (links are listed, not followed)."""
    return sorted(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/")
                  for directory, _, names in os.walk(root) for name in names)


def manifest(root: str) -> dict[str, dict]:
    """{path relative to root: {bytes, sha256}} for every file below `root`."""
    paths = {rel: os.path.join(root, *rel.split("/")) for rel in relative_files(root)}
    return {rel: {"bytes": os.path.getsize(path), "sha256": sha256(path)} for rel, path in paths.items()}


def read_export_report(directory: str) -> dict | None:
    """The report of the export in `directory`; None when it holds none (or not one of ours)."""
    try:
        with open(os.path.join(directory, REPORT), encoding="utf8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and {"model", "checkpoint"} <= set(report) else None


def _within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies inside it (both real, absolute paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _report_run(report: dict) -> str | None:
    """The run directory an export came from: recorded, or (exports before it was) the checkpoint's."""
    if report.get("model_dir"):
        return report["model_dir"]
    checkpoint = report.get("checkpoint")
    return os.path.dirname(os.path.dirname(checkpoint)) if isinstance(checkpoint, str) else None


class ExportDestination:
    """An export directory that `check` found safe to write; `commit` moves a staged export in."""

    def __init__(self, path: str, model_dir: str, previous: dict | None):
        self.path, self.model_dir, self.previous = path, model_dir, previous
        self.committed = False  # set once the new files are in place

    def interrupted(self) -> ExportInterrupted:
        """What to tell a user who stopped the export, from how far it got."""
        if self.committed:
            return ExportInterrupted(f"stopped after the export was written to {self.path}")
        state = "is as it was" if self.previous or os.path.isdir(self.path) else "was not created"
        return ExportInterrupted(f"stopped: nothing was exported; {self.path} {state}")

    @classmethod
    def check(cls, export_dir: str, model_dir: str, setting: str = "export_dir") -> ExportDestination:
        """The destination, or SettingError naming `export_dir` and what to do instead."""
        def refuse(why: str):
            raise SettingError(setting, f"{export_dir} {why}")

        if files.is_remote(export_dir):
            refuse("is not on the local disk: an export is built in a local directory and moved in there; give a "
                   "local export directory (and copy it to the bucket afterwards)")
        given = os.path.abspath(export_dir)
        path, run = os.path.realpath(given), os.path.realpath(os.path.abspath(model_dir))
        advice = ("give a new or empty directory, or an earlier export of this run (the default is the run's "
                  "export/ folder)")
        if path == os.path.realpath(os.sep):
            refuse(f"is the root directory: {advice}")
        if _within(run, path):
            refuse(f"is the run's own directory: {advice}" if path == run else f"holds the run {model_dir}: {advice}")
        protected = files.protected_folder(path)
        if protected:
            refuse(f"{'is' if protected[1] else 'holds'} {protected[0]}: {advice}")
        if os.path.lexists(path) and not os.path.isdir(path):
            refuse(f"is a file, not a directory: {advice}")
        entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
        previous = read_export_report(path) if entries else None
        if entries and previous is None:
            shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
            refuse(f"holds files that are not an export ({shown}): nothing was written; {advice}")
        earlier_run = previous and _report_run(previous)
        if (earlier_run and os.path.realpath(earlier_run) != run
                and os.path.exists(os.path.join(earlier_run, "run.json"))):
            refuse(f"holds an export of another run ({earlier_run}): export this run into another directory")
        return cls(given, model_dir, previous)

    def staging(self) -> str:
        """A new private directory beside the destination (same disk: the final moves are renames)."""
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.tmp-", dir=parent)

    def _earlier_files(self) -> dict[str, dict]:
        return dict((self.previous or {}).get("files") or {})

    def _provably_earlier(self, entry: str) -> bool:
        """Whether the destination's `entry` (a file or folder) holds exactly what the earlier
        export's report lists under that name: only then may it be replaced."""
        listed = {rel: info for rel, info in self._earlier_files().items() if rel == entry or rel.startswith(entry + "/")}
        target = os.path.join(self.path, entry)
        if not listed or os.path.islink(target):
            return False
        if os.path.isdir(target):
            present = {f"{entry}/{rel}": info for rel, info in manifest(target).items()}
        else:
            present = {entry: {"sha256": sha256(target)}}
        return set(present) == set(listed) and all(present[rel]["sha256"] == listed[rel].get("sha256") for rel in listed)

    def commit(self, staging: str, report: dict) -> dict:
        """Move the staged export in (see the module's rules), write the report with `files`
        (every file of this export and the kept ones, each with its checkpoint), `kept` (files of
        earlier exports left as they were), `moved_aside` and `other_files`; returns the report."""
        written = manifest(staging)
        checkpoint = report["checkpoint"]
        os.makedirs(self.path, exist_ok=True)
        os.chmod(staging, 0o777 & ~files.current_umask())  # mkdtemp makes it private; an export is shared
        retired = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.old-", dir=os.path.dirname(self.path))
        moved_aside = []
        try:
            with files.interrupts_deferred():
                staged = sorted(os.listdir(staging))
                for entry in staged + ([REPORT] if os.path.lexists(os.path.join(self.path, REPORT)) else []):
                    target = os.path.join(self.path, entry)
                    if not os.path.lexists(target):
                        continue
                    if entry == REPORT and self.previous is not None:
                        files.move_into_place(target, os.path.join(retired, entry))  # the report we read: rewritten below
                    elif self._provably_earlier(entry):
                        files.move_into_place(target, os.path.join(retired, entry))
                    else:
                        moved_aside.append(os.path.relpath(files.move_aside(target, "replaced"), self.path))
                for entry in staged:
                    files.move_into_place(os.path.join(staging, entry), os.path.join(self.path, entry))
                report = self._merged_report(report, written, checkpoint, staged, moved_aside)
                files.atomic_write(os.path.join(self.path, REPORT), json.dumps(report, indent=2) + "\n")
                self.committed = True
        except BaseException:
            if not self.committed:  # put the earlier export's files back where no new one landed
                for entry in os.listdir(retired):
                    if not os.path.lexists(os.path.join(self.path, entry)):
                        files.move_into_place(os.path.join(retired, entry), os.path.join(self.path, entry))
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # made for this export alone
            # Only what was proven the earlier export's is in `retired`: deleted once replaced (or
            # put back); anything left after a failure stays, hidden beside the export.
            if self.committed or not os.listdir(retired):
                shutil.rmtree(retired, ignore_errors=True)
        return report

    def _merged_report(self, report: dict, written: dict, checkpoint: str, staged: list[str],
                       moved_aside: list[str]) -> dict:
        listed = {rel: dict(info, checkpoint=checkpoint) for rel, info in written.items()}
        earlier = self.previous or {}
        kept = {}
        for rel, info in self._earlier_files().items():
            path = os.path.join(self.path, *rel.split("/"))
            if rel.split("/")[0] not in staged and os.path.isfile(path) and sha256(path) == info.get("sha256"):
                kept[rel] = info
        report = dict(report, model_dir=os.path.abspath(self.model_dir), files=dict(sorted({**listed, **kept}.items())))
        if kept:
            report["kept"] = sorted(kept)
            older = sorted(rel for rel, info in kept.items() if info.get("checkpoint") != checkpoint)
            if older:  # an export of two models: say so, it is rarely what a user wants
                report["kept_from_other_checkpoints"] = older
            # Their figures stay, each saying which checkpoint it measured.
            for name, entry in (earlier.get("tflite") or {}).items():
                if f"model_{name}.tflite" in kept and name not in report.get("tflite", {}):
                    report.setdefault("tflite", {})[name] = dict(entry, checkpoint=kept[f"model_{name}.tflite"]["checkpoint"])
            for section, file in _FILE_SECTIONS.items():
                if file in kept and section not in report and section in earlier:
                    value = earlier[section]
                    report[section] = dict(value, checkpoint=kept[file]["checkpoint"]) if isinstance(value, dict) else value
        if moved_aside:
            report["moved_aside"] = moved_aside
        others = [rel for rel in relative_files(self.path) if rel not in report["files"] and rel != REPORT]
        if others:
            report["other_files"] = others
        return report
