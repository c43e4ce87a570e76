"""Where a run's files go: into ``NAME.incomplete/`` while it runs, moved to ``NAME/`` only once it is complete.

So ``OUT/NAME`` always holds one complete run, never a new run's partial files beside an older run's report. A run
that stops early (Ctrl-C, an error, a kill) leaves the previous complete run untouched and its own partial outputs
in ``NAME.incomplete/``, whose ``INCOMPLETE.md`` says that it did not finish and where it stopped.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

INCOMPLETE_SUFFIX = ".incomplete"
MARKER = "INCOMPLETE.md"
# A folder holding one of these is a demo run's output, which a new run of the same name may replace; any other
# non-empty folder is never removed (not even one whose sub-folders are runs: `--out . --name runs` must not delete
# every run).
RUN_FILES = ("metrics.jsonl", "summary.json", "compare.md", MARKER)


def incomplete_path(final: Path) -> Path:
    """``OUT/NAME`` -> ``OUT/NAME.incomplete``: where a run writes until it is complete."""
    return final.with_name(final.name + INCOMPLETE_SUFFIX)


def _may_replace(folder: Path) -> bool:
    """Absent, empty, or a demo run's output."""
    if not folder.exists():
        return True
    return folder.is_dir() and (not any(folder.iterdir()) or any((folder / name).is_file() for name in RUN_FILES))


def check_replaceable(final: Path) -> None:
    """Raise ValueError naming the folder when ``final`` or ``final.incomplete`` holds something other than a demo
    run's output (a run replaces both)."""
    for folder in (Path(final), incomplete_path(Path(final))):
        if not _may_replace(folder):
            raise ValueError(f"{folder} exists and is not a demo run's output (it holds none of "
                             f"{', '.join(RUN_FILES)}); choose another --out or --name, or move it away")


class OutputFolder:
    """Context manager for one run's output folder ``final`` (a run, or ``--compare``'s folder of runs).

    Inside, files are written under ``work`` (``final.incomplete``, replaced if an earlier run left one); on a
    clean exit ``work`` takes the place of ``final`` (the previous run's folder, if any, is removed after the move);
    on an exception ``work`` stays, with ``INCOMPLETE.md`` naming the exception and ``stage``, which the writer keeps
    current (e.g. ``"RL step 3 of 30 ..."``). A process killed outright leaves the marker's "in progress" text.
    """

    def __init__(self, final: Path):
        self.final = Path(final)
        self.work = incomplete_path(self.final)
        self.stage = "the set-up"

    def located(self, path: Path) -> Path:
        """Where ``path``, named as it will be once the run is complete (under ``final``), is while it runs."""
        try:
            return self.work / Path(path).relative_to(self.final)
        except ValueError:
            return Path(path)

    def __enter__(self) -> OutputFolder:
        check_replaceable(self.final)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self._mark(f"This run is in progress or was killed (started {time.strftime('%Y-%m-%d %H:%M:%S')}, "
                   f"process {os.getpid()}).")
        return self

    def __exit__(self, error_type, error, traceback) -> bool:
        if error_type is None:
            (self.work / MARKER).unlink()
            self._publish()
        else:
            reason = error_type.__name__ + (f" ({error})" if str(error) else "")
            self._mark(f"This run did not finish: it was stopped by {reason} during {self.stage}.")
        return False  # the exception goes on

    def _mark(self, status: str) -> None:
        (self.work / MARKER).write_text(
            f"# Incomplete run\n\n{status}\n\nThe files here are its partial outputs (a run's `metrics.jsonl` "
            f"holds the RL steps that finished). The last complete run of this name, if any, is untouched in "
            f"`../{self.final.name}/`; the next run of this name replaces this folder.\n")

    def _publish(self) -> None:
        """``work`` -> ``final``. Two renames: readers of ``final`` see the previous complete run, then (for the
        instant between the renames) no folder, then the new one; never a mixture. The previous run waits in
        ``.NAME.replaced`` until it is removed."""
        replaced = self.final.with_name(f".{self.final.name}.replaced")
        if replaced.exists():  # left by a run stopped between the renames
            shutil.rmtree(replaced)
        if self.final.exists():
            self.final.rename(replaced)
        self.work.rename(self.final)
        if replaced.exists():
            shutil.rmtree(replaced)
