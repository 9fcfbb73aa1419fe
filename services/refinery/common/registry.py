"""The MLflow model registry as Refinery uses it: versions, aliases, local copies to serve.

Aliases, not stages: ``champion`` serves, ``challenger`` is under evaluation, ``canary``
answers a share of live traffic beside the champion (its ``canary_share`` tag says how
much), ``previous`` is where a rollback goes. Every version carries a ``kind`` tag
(``base`` or ``lora``) and a LoRA version names the base it applies to in ``base_version``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from refinery.common.exceptions import RegistryError
from refinery.common.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
CANARY = "canary"
CANARY_SHARE_TAG = "canary_share"
CANARY_MODE_TAG = "canary_mode"  # live or shadow
# The version's gate-metric score (0-1) on the golden set when it was registered.
GOLDEN_SCORE_TAG = "golden_score"
# The url of a vLLM server serving the version merged into its base (refinery/deployer).
MERGED_URL_TAG = "merged_url"


@dataclass(frozen=True)
class VersionInfo:
    """What the rest of Refinery needs to know about one registered version."""

    name: str
    version: str
    kind: str
    source: str
    run_id: str | None
    base_version: str | None
    tags: dict[str, str]

    @property
    def served_name(self) -> str:
        """Immutable serving name: a version is loaded once under it and never reused."""
        return f"{self.name}-v{self.version}"

    @classmethod
    def from_mlflow(cls, mv: ModelVersion) -> VersionInfo:
        tags = dict(mv.tags or {})
        return cls(
            name=mv.name,
            version=str(mv.version),
            kind=tags.get("kind", "base"),
            source=mv.source or "",
            run_id=mv.run_id,
            base_version=tags.get("base_version"),
            tags=tags,
        )


class ModelRegistry:
    """Thin, explicit wrapper over MlflowClient for one registered model."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.registered_model
        self.tracking_uri = settings.mlflow_uri
        self.client = MlflowClient(
            tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri
        )

    def exists(self) -> bool:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def by_alias(self, alias: str) -> VersionInfo | None:
        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return VersionInfo.from_mlflow(mv)

    def champion(self) -> VersionInfo | None:
        return self.by_alias(CHAMPION)

    def get(self, version: str) -> VersionInfo:
        try:
            return VersionInfo.from_mlflow(self.client.get_model_version(self.name, version))
        except MlflowException as exc:
            raise RegistryError(f"{self.name} has no version {version!r}: {exc}") from exc

    def register(
        self, source: str, run_id: str, tags: dict[str, str], description: str = ""
    ) -> VersionInfo:
        """Add a version from a run's artifact ``source``; it is READY when this returns."""
        if not self.exists():
            self.client.create_registered_model(self.name)
        mv = self.client.create_model_version(
            self.name, source, run_id=run_id, tags=tags, description=description
        )
        return VersionInfo.from_mlflow(mv)

    def canary(self) -> VersionInfo | None:
        return self.by_alias(CANARY)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)

    def delete_alias(self, alias: str) -> None:
        """Remove ``alias``; removing one that is not set is not an error."""
        try:
            self.client.delete_registered_model_alias(self.name, alias)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise

    def local_copy(self, info: VersionInfo, models_dir: Path) -> Path:
        """A local folder holding the version's files (downloaded once; versions are immutable)."""
        dest = models_dir / info.served_name
        if (dest / ".complete").exists():
            return dest
        staging = models_dir / f".{info.served_name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        got = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=info.source, dst_path=str(staging), tracking_uri=self.tracking_uri
            )
        )
        shutil.rmtree(dest, ignore_errors=True)
        got.rename(dest)
        shutil.rmtree(staging, ignore_errors=True)
        (dest / ".complete").touch()
        return dest

    def serving_base(self, info: VersionInfo) -> VersionInfo:
        """The base version vLLM must serve for ``info`` (itself when it is a base)."""
        if info.kind == "base":
            return info
        if info.base_version is None:
            raise RegistryError(f"{info.served_name} is a LoRA version with no base_version tag")
        return self.get(info.base_version)
