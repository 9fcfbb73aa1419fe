"""Errors shared by all Refinery processes.

RefineryError
 ├── ConfigError          a setting or the task file is missing or wrong
 ├── EventValidationError a Kafka value or HTTP body does not match its schema
 ├── ProcessError         a managed process (kafka, mlflow, vllm, ...) failed to start or stop
 └── RegistryError        the MLflow registry is missing a model, version or alias
"""


class RefineryError(Exception):
    """Base of every error Refinery raises on purpose."""


class ConfigError(RefineryError):
    """A setting or the task file is missing or wrong; the message names the key and the fix."""


class EventValidationError(RefineryError):
    """An event does not match its schema; the message names the field and the value."""


class ProcessError(RefineryError):
    """A managed process did not start, did not become healthy, or did not stop."""


class RegistryError(RefineryError):
    """The model registry lacks what was asked for."""
