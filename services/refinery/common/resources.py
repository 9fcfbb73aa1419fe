"""Files that ship inside the package: the event schemas and the example task files.

Found through ``importlib.resources``, so the same call works from a checkout (where
``refinery/data/`` links to the repository's ``schemas/``, ``tasks/`` and ``refinery.yaml``)
and from an installed wheel (where they are copied in).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def packaged(*parts: str) -> Path:
    """The path of a shipped file, e.g. ``packaged("schemas", "feedback.v2.json")``.

    A real path: pip installs packages as folders, never zipped, and in a checkout the
    link is resolved, so callers see ``<repo>/refinery.yaml`` rather than the link.
    """
    resource = files("refinery").joinpath("data", *parts)
    return Path(str(resource)).resolve()
