"""Adapters fetched from the MLflow registry over HTTP, into a replica's own cache.

Runs inside vLLM's process and venv, so it uses the standard library only (no mlflow
client, no refinery settings). A served name ``<model>-v<N>`` is version N of the
registered model; its files come through MLflow's artifact proxy
(``mlflow-artifacts:/...``, the server's ``--serve-artifacts``), which also fronts an S3 or
other object store configured as the server's ``--artifacts-destination``: replicas need
the MLflow address, never the store's credentials or a disk shared with anyone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

# Under "vllm": vLLM's own log handlers print it beside its messages.
log = logging.getLogger("vllm.refinery")

ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"


class AdapterUnavailable(Exception):
    """The registry has no usable adapter under this name; the message says why."""


class RegistryAdapters:
    """``fetch(served_name)``: the local folder of that version's adapter, downloaded once
    (versions are immutable, so a cached copy never goes stale)."""

    def __init__(
        self,
        mlflow_uri: str,
        model: str,
        cache_dir: Path,
        base_version: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.mlflow_uri = mlflow_uri.rstrip("/")
        self.model = model
        self.cache_dir = cache_dir
        self.base_version = base_version
        self.timeout_s = timeout_s
        self._name = re.compile(rf"{re.escape(model)}-v(\d+)")
        # vLLM resolves a name once per request that asks for it: the first requests for a
        # new champion arrive together, and each fetch cleared the other's download (vLLM
        # then answered 404; a promotion test on two replicas, 2026-12-01).
        self._fetching = threading.Lock()

    def version_of(self, served_name: str) -> str | None:
        """N for ``<model>-vN``; None for any other name (not ours to resolve)."""
        match = self._name.fullmatch(served_name)
        return match.group(1) if match else None

    def fetch(self, served_name: str) -> Path:
        version = self.version_of(served_name)
        if version is None:
            raise AdapterUnavailable(f"{served_name!r} is not a version of {self.model!r}")
        with self._fetching:  # one download at a time; the waiting ones find it complete
            return self._fetch(served_name, version)

    def _fetch(self, served_name: str, version: str) -> Path:
        dest = self.cache_dir / served_name
        if (dest / ".complete").exists():
            return dest
        query = {"name": self.model, "version": version}
        tags = self._model_version_tags(query)
        if tags.get("kind") != "lora":
            raise AdapterUnavailable(f"{served_name} is a {tags.get('kind', 'base')} version")
        wanted_base = tags.get("base_version")
        if self.base_version is not None and wanted_base != self.base_version:
            raise AdapterUnavailable(
                f"{served_name} applies to base v{wanted_base}; this replica serves base "
                f"v{self.base_version}"
            )
        uri = self._get("/api/2.0/mlflow/model-versions/get-download-uri", query)["artifact_uri"]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Its own folder per download: another process sharing the cache cannot clear it.
        staging = Path(tempfile.mkdtemp(prefix=f".{served_name}.", dir=self.cache_dir))
        try:
            self._copy(uri, staging)
            if not (staging / "adapter_config.json").exists():
                raise AdapterUnavailable(f"{served_name} at {uri} has no adapter_config.json")
            shutil.rmtree(dest, ignore_errors=True)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        (dest / ".complete").touch()
        log.info("fetched %s from %s into %s", served_name, uri, dest)
        return dest

    def _model_version_tags(self, query: dict[str, str]) -> dict[str, str]:
        body = self._get("/api/2.0/mlflow/model-versions/get", query)
        return {t["key"]: t["value"] for t in body["model_version"].get("tags", [])}

    def _copy(self, uri: str, dest: Path) -> None:
        """Copy the folder at ``uri``: through MLflow's artifact proxy, or from a local path
        when the server stores artifacts on this very host (older stores)."""
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme == "mlflow-artifacts":
            self._download_tree(parsed.path.lstrip("/"), dest)
        elif parsed.scheme in ("", "file") and Path(parsed.path).is_dir():
            shutil.copytree(parsed.path, dest, dirs_exist_ok=True)
        else:
            raise AdapterUnavailable(
                f"cannot read {uri} from here: start MLflow with --serve-artifacts (its "
                "--artifacts-destination may be s3://...) so replicas fetch through it"
            )

    def _download_tree(self, path: str, dest: Path) -> None:
        listing = self._get(ARTIFACTS_API, {"path": path})
        for entry in listing.get("files", []):
            name = entry["path"].rsplit("/", 1)[-1]
            if entry.get("is_dir"):
                (dest / name).mkdir()
                self._download_tree(f"{path}/{name}", dest / name)
                continue
            url = f"{self.mlflow_uri}{ARTIFACTS_API}/{urllib.parse.quote(f'{path}/{name}')}"
            with self._open(url) as resp, open(dest / name, "wb") as out:
                shutil.copyfileobj(resp, out)

    def _get(self, route: str, query: dict[str, str]) -> dict[str, Any]:
        url = f"{self.mlflow_uri}{route}?{urllib.parse.urlencode(query)}"
        with self._open(url) as resp:
            body: dict[str, Any] = json.load(resp)
        return body

    def _open(self, url: str) -> Any:
        request = urllib.request.Request(url)
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise AdapterUnavailable(f"MLflow answered {exc.code} for {url}: {detail}") from exc
        except OSError as exc:
            raise AdapterUnavailable(f"MLflow unreachable at {url}: {exc}") from exc
