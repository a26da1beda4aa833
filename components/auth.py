"""Access control of the MLflow tracking server: MLflow's basic-auth app, configured from the environment only.

Server side, ``python -m components.auth [--config PATH] -- <mlflow server options>`` (the container command of the
tracking server) checks the settings below, writes the basic-auth ini that ``MLFLOW_AUTH_CONFIG_PATH`` points at
and replaces itself with ``mlflow server --app-name basic-auth <options>``:

- ``MLFLOW_AUTH_ADMIN_USERNAME``, ``MLFLOW_AUTH_ADMIN_PASSWORD``: the admin user created on the first start against
  an empty auth database; the password is required, at least 12 characters and never MLflow's old default;
- ``MEDGAN_MLFLOW_AUTH_DB_URI``: SQLAlchemy URI of the users/permissions database (PostgreSQL when deployed);
- ``MEDGAN_MLFLOW_DEFAULT_PERMISSION``: ``NO_PERMISSIONS`` (default) or ``READ``, what a user may do with
  experiments and models nobody granted them;
- ``MLFLOW_FLASK_SERVER_SECRET_KEY``: the static key of the app's CSRF protection, the same for every replica.

The admin variables carry MLflow's own names, which the installed MLflow also reads, so one Secret serves both this
entrypoint and a plain ``mlflow server --app-name basic-auth``. They only bootstrap the admin: once the user exists,
changing them does not change its password (rotate it with the auth API, ``update_user_password``).

``NO_PERMISSIONS`` is the default because runs hold medical images: the report shows each sample's nearest real
training images, and ``READ`` would show them to every account of the server. Users see what they create (MLflow
grants its creator ``MANAGE``) and what an admin grants them.

Client side nothing is specific to this project: MLflow's ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` are read on every request by ``MlflowClient`` and the fluent API, and the local
runner's component subprocesses inherit them.
"""

from __future__ import annotations

import configparser
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from components.errors import AuthConfigError

ADMIN_USER_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
AUTH_DB_ENV = "MEDGAN_MLFLOW_AUTH_DB_URI"
DEFAULT_PERMISSION_ENV = "MEDGAN_MLFLOW_DEFAULT_PERMISSION"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
CONFIG_PATH_ENV = "MLFLOW_AUTH_CONFIG_PATH"

# The admin password basic_auth.ini shipped before MLflow 3 (GHSA-gq3w-7jj3-x7gr): publicly known, never accepted.
MLFLOW_DEFAULT_PASSWORD = "password1234"
PLACEHOLDER = "CHANGE_ME"  # what the Secret templates of k8s/secrets/ hold instead of values
MIN_PASSWORD_LENGTH = 12  # MLflow's own password policy; checked here so the message names our variable
PERMISSIONS = ("NO_PERMISSIONS", "READ")
DEFAULT_PERMISSION = "NO_PERMISSIONS"
AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"


@dataclass(frozen=True)
class AuthSettings:
    """What the basic-auth app needs; refuses unsafe values when built, so a constructed one is safe to write."""

    admin_username: str
    admin_password: str = field(repr=False)
    database_uri: str = field(repr=False)  # may carry the database's password
    default_permission: str = DEFAULT_PERMISSION

    def __post_init__(self) -> None:
        _check_value(ADMIN_USER_ENV, self.admin_username)
        _check_value(ADMIN_PASSWORD_ENV, self.admin_password)
        if self.admin_password == MLFLOW_DEFAULT_PASSWORD:
            raise AuthConfigError(
                f"{ADMIN_PASSWORD_ENV} is MLflow's publicly known default admin password; set a secret one"
            )
        if len(self.admin_password) < MIN_PASSWORD_LENGTH:
            raise AuthConfigError(
                f"{ADMIN_PASSWORD_ENV} has {len(self.admin_password)} characters; MLflow needs at least "
                f"{MIN_PASSWORD_LENGTH}"
            )
        _check_value(AUTH_DB_ENV, self.database_uri)
        if "://" not in self.database_uri:
            raise AuthConfigError(
                f"{AUTH_DB_ENV} is not a database URI (e.g. postgresql+psycopg2://user:pw@host/db or sqlite:///auth.db)"
            )
        if self.default_permission not in PERMISSIONS:
            raise AuthConfigError(
                f"{DEFAULT_PERMISSION_ENV}={self.default_permission!r}: choose one of {', '.join(PERMISSIONS)}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AuthSettings:
        """Read the settings from ``env`` (default ``os.environ``); missing required variables are named."""
        env = os.environ if env is None else env
        missing = [name for name in (ADMIN_USER_ENV, ADMIN_PASSWORD_ENV, AUTH_DB_ENV) if not env.get(name)]
        if missing:
            raise AuthConfigError(
                f"the tracking server's access control needs {', '.join(missing)} (from its Secret); "
                "MLflow's defaults are never used"
            )
        return cls(
            admin_username=env[ADMIN_USER_ENV],
            admin_password=env[ADMIN_PASSWORD_ENV],
            database_uri=env[AUTH_DB_ENV],
            default_permission=env.get(DEFAULT_PERMISSION_ENV) or DEFAULT_PERMISSION,
        )


def _check_value(name: str, value: str) -> None:
    # An ini value cannot hold a line break, and configparser strips outer whitespace: a secret written from a
    # file with a trailing newline would otherwise become a different password than the one clients use.
    if not value:
        raise AuthConfigError(f"{name} is empty")
    if PLACEHOLDER in value:
        raise AuthConfigError(
            f"{name} still holds the template placeholder {PLACEHOLDER} (k8s/secrets/); set a real value"
        )
    if "\n" in value or "\r" in value or value != value.strip():
        raise AuthConfigError(f"{name} has a line break or leading/trailing whitespace (a secret read from a file?)")


def write_auth_config(path: str | os.PathLike[str], settings: AuthSettings) -> Path:
    """Write the basic-auth ini for ``settings`` at ``path``, readable by its owner only; return the path."""
    # MLflow reads the file with configparser's %-interpolation: a literal % (URL-encoded database passwords) is %%.
    values = {
        "default_permission": settings.default_permission,
        "database_uri": settings.database_uri,
        "admin_username": settings.admin_username,
        "admin_password": settings.admin_password,
        "authorization_function": AUTHORIZATION_FUNCTION,
    }
    parser = configparser.RawConfigParser()
    parser["mlflow"] = {key: value.replace("%", "%%") for key, value in values.items()}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    with os.fdopen(fd, "w") as fh:
        parser.write(fh)
    return target


def server_command(mlflow_args: Sequence[str]) -> list[str]:
    """The ``mlflow server`` command line with the basic-auth app and the caller's other options."""
    for arg in mlflow_args:
        if arg == "--dev" or arg.split("=")[0] == "--app-name":
            raise AuthConfigError(f"{arg.split('=')[0]} is set by this entrypoint (basic-auth, no --dev)")
    return [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", *mlflow_args]


def serve(config_path: str | os.PathLike[str] | None, mlflow_args: Sequence[str]) -> None:
    """Check the environment, write the ini and exec the tracking server in this process (never returns)."""
    settings = AuthSettings.from_env()
    if not os.environ.get(SECRET_KEY_ENV):
        raise AuthConfigError(f"{SECRET_KEY_ENV} is empty; the basic-auth app needs a static secret key (CSRF)")
    for name in (SECRET_KEY_ENV, "MLFLOW_BACKEND_STORE_URI"):
        if PLACEHOLDER in os.environ.get(name, ""):
            _check_value(name, os.environ[name])
    command = server_command(mlflow_args)
    if config_path is None:
        config_path = Path(tempfile.mkdtemp(prefix="medgan-mlflow-auth-")) / "basic_auth.ini"
    os.environ[CONFIG_PATH_ENV] = str(write_auth_config(config_path, settings))
    # MLflow prefers these variables to the ini, even when empty: drop them so the server reads the checked values.
    for name in (ADMIN_USER_ENV, ADMIN_PASSWORD_ENV):
        os.environ.pop(name, None)
    sys.stdout.flush()
    os.execv(command[0], command)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m components.auth [--config PATH] [--write-only] [-- MLFLOW_SERVER_OPTIONS...]``."""
    import argparse

    args = list(sys.argv[1:] if argv is None else argv)
    ours, mlflow_args = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (args, [])
    parser = argparse.ArgumentParser(
        prog="python -m components.auth",
        description="Run the MLflow tracking server with basic auth configured from the environment "
        "(options after -- go to `mlflow server`).",
    )
    parser.add_argument("--config", help="where to write the auth ini (default: a private temporary folder)")
    parser.add_argument("--write-only", action="store_true", help="write the ini and exit, do not start a server")
    opts = parser.parse_args(ours)
    try:
        if opts.write_only:
            if not opts.config:
                parser.error("--write-only needs --config")
            print(write_auth_config(opts.config, AuthSettings.from_env()))
        else:
            serve(opts.config, mlflow_args)
    except AuthConfigError as exc:
        print(f"medgan auth: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
