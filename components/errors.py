"""User-facing error types.

Every error a user can cause (bad config, bad data, failed validation) is a ``MedganError``: the CLI prints
its message without a traceback and exits with status 2. Anything else is a bug and keeps its traceback.
"""


class MedganError(Exception):
    """Base class of errors caused by user input or data, reported without a traceback."""


class ConfigError(MedganError):
    """An unknown preset, an unknown config key, or a value of the wrong type."""


class DataError(MedganError):
    """A missing data folder, an unreadable labels.csv, too many quarantined files, a broken archive."""


class ValidationFailed(MedganError):
    """Critical data-validation expectations failed; the message summarises which and on how many rows."""


class TrainingError(MedganError):
    """Training could not finish (e.g. it diverged more often than the rollback budget allows)."""


class RegistryError(MedganError):
    """The model registry refused an operation or holds inconsistent state."""


class AuthConfigError(ConfigError):
    """The tracking server's access control is missing or unsafe (no admin password, MLflow's default, ...)."""


class TrackingAccessDenied(MedganError):
    """The MLflow tracking server refused the client: no or wrong credentials (401) or no permission (403)."""
