"""The Evidently UI's watcher survives a project file it reads while the monitor writes it."""

from __future__ import annotations

import uuid
from pathlib import Path

from evidently.ui.service.storage.local.base import LocalState
from evidently.ui.service.storage.local.watcher import WorkspaceDirHandler
from evidently.ui.workspace import Workspace
from watchdog.events import FileCreatedEvent, FileModifiedEvent

from refinery.stack.evidently_ui import tolerate_half_written_projects


def test_a_half_written_project_file_is_read_once_whole(tmp_path: Path) -> None:
    """Unpatched, the JSONDecodeError of the first event ends the watcher's thread (a
    closed-loop run of 2026-12-01: the UI listed no project)."""
    written = Workspace.create(str(tmp_path / "monitor")).create_project(f"p{uuid.uuid4().hex}")
    whole = (tmp_path / "monitor" / str(written.id) / "metadata.json").read_text()
    tolerate_half_written_projects()
    state = LocalState.load(str(tmp_path / "ui"), None)
    watcher = WorkspaceDirHandler(state)
    target = tmp_path / "ui" / str(written.id) / "metadata.json"
    target.parent.mkdir()
    target.write_text(whole[: len(whole) // 2])
    watcher.dispatch(FileCreatedEvent(str(target)))  # no exception: the thread goes on
    assert written.id not in state.projects
    target.write_text(whole)
    watcher.dispatch(FileModifiedEvent(str(target)))
    assert state.projects[written.id].name == written.name
