"""The monitor's side of the Evidently workspace the UI serves: each window's snapshot is
written whole, the newest ``kept`` stay, and no old snapshot is ever read back.

Evidently's own local ``Workspace`` reads every snapshot of the folder into memory when it
opens (for its dataset manager, which the monitor never uses): up to 2.4 MB and 23 ms per
window here, all before the worker's first window. The UI holds every snapshot in memory
too, so the count kept is what bounds its memory (and the disk).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

from evidently.core.report import Snapshot
from evidently.legacy.core import new_id
from evidently.legacy.ui.type_aliases import STR_UUID, SnapshotID
from evidently.legacy.utils import NumpyEncoder
from evidently.ui.storage.local.base import SNAPSHOTS_DIR_NAME, LocalState
from evidently.ui.workspace import Workspace

log = logging.getLogger(__name__)

STALE_PARTIAL_S = 600  # a snapshot takes well under a second to write


class WindowWorkspace(Workspace):
    """A local Evidently workspace that writes snapshots and keeps the newest ``kept``."""

    def __init__(self, path: Path, kept: int) -> None:
        # Not Workspace.__init__: that one builds the dataset manager that loads everything.
        path.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.state = LocalState(self.path)
        self.kept = kept
        # Beside the workspace, not in it: the UI's watcher ignores a file renamed from a name
        # it does not know, and sees one moved in from outside as created, whole.
        self.partial_dir = path.parent / f".{path.name}-partial"
        # What a worker killed mid-write left (another worker may be writing one right now).
        for stale in self.partial_dir.glob("*.json"):
            if time.time() - stale.stat().st_mtime > STALE_PARTIAL_S:
                stale.unlink(missing_ok=True)

    def _add_run(self, project_id: STR_UUID, snapshot: Snapshot) -> SnapshotID:
        snapshot_id = new_id()  # uuid7: names sort in the order they were written
        final = Path(self.path, str(project_id), SNAPSHOTS_DIR_NAME, f"{snapshot_id}.json")
        final.parent.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=self.partial_dir, suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(snapshot.to_snapshot_model().dict(), f, cls=NumpyEncoder)
            os.chmod(partial, 0o644)  # mkstemp's 0600 would hide it from a UI run as another user
            os.replace(partial, final)  # a kill before this leaves nothing in the workspace
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        self.prune(project_id)
        return snapshot_id

    def prune(self, project_id: STR_UUID) -> list[SnapshotID]:
        """Delete all but the newest ``kept`` snapshots; returns the deleted."""
        runs = sorted(self.list_runs(project_id), key=str)
        old = runs[: max(0, len(runs) - self.kept)]
        for snapshot_id in old:
            self.delete_run(project_id, snapshot_id)
        if old:
            log.debug("evidently: %d old window snapshots deleted", len(old))
        return old
