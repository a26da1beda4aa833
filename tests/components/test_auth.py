"""Access control: the basic-auth ini writer, and a real ``mlflow server --app-name basic-auth`` started by
``python -m components.auth`` on PostgreSQL (tracking and auth stores) that refuses anonymous and wrong clients
and serves the project's tracker, registry calls and a pipeline component given credentials."""

from __future__ import annotations

import os
import socket
import stat
import sys
import urllib.error
import urllib.request
import uuid

import pytest

from components import auth
from components.errors import AuthConfigError, TrackingAccessDenied
from components.tracking import RunTracker

ADMIN = "medgan-admin"
# '%' and '@' exercise the ini's %-escaping end to end: the server reads the password from the written file.
PASSWORD = f"s3cret%{uuid.uuid4().hex[:12]}@x"
SECRET_KEY = uuid.uuid4().hex
PG_HOST = os.environ.get("MEDGAN_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MEDGAN_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MEDGAN_TEST_PG_USER", "postgres")
CLIENT_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _settings(**overrides: str) -> dict[str, str]:
    env = {
        auth.ADMIN_USER_ENV: ADMIN,
        auth.ADMIN_PASSWORD_ENV: PASSWORD,
        auth.AUTH_DB_ENV: "sqlite:////tmp/auth.db",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


# ---------------------------------------------------------------- the ini writer and the entrypoint, no server


REFUSED = [
    ({auth.ADMIN_PASSWORD_ENV: None}, "MLFLOW_AUTH_ADMIN_PASSWORD"),
    ({auth.ADMIN_PASSWORD_ENV: ""}, "MLFLOW_AUTH_ADMIN_PASSWORD"),
    ({auth.ADMIN_PASSWORD_ENV: "password1234"}, "publicly known default"),
    ({auth.ADMIN_PASSWORD_ENV: "short-pw"}, "at least 12"),
    ({auth.ADMIN_PASSWORD_ENV: PASSWORD + "\n"}, "line break"),
    ({auth.ADMIN_USER_ENV: None}, "MLFLOW_AUTH_ADMIN_USERNAME"),
    ({auth.AUTH_DB_ENV: None}, "MEDGAN_MLFLOW_AUTH_DB_URI"),
    ({auth.AUTH_DB_ENV: "auth.db"}, "not a database URI"),
    ({auth.DEFAULT_PERMISSION_ENV: "EDIT"}, "NO_PERMISSIONS, READ"),
    # a value copied from the Secret template of k8s/secrets/ without filling it in
    ({auth.ADMIN_PASSWORD_ENV: "CHANGE_ME-admin-password-at-least-12-characters"}, "placeholder CHANGE_ME"),
    ({auth.AUTH_DB_ENV: "postgresql+psycopg2://CHANGE_ME-user:pw@db/auth"}, "MEDGAN_MLFLOW_AUTH_DB_URI still holds"),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_unsafe_or_missing_settings_are_refused(overrides, message):
    with pytest.raises(AuthConfigError, match=message):
        auth.AuthSettings.from_env(_settings(**overrides))


def test_the_password_never_shows_in_the_settings_repr():
    assert PASSWORD not in repr(auth.AuthSettings.from_env(_settings()))


@pytest.mark.parametrize("permission", [None, "READ"])
def test_the_ini_is_what_mlflow_reads_and_private(tmp_path, monkeypatch, permission):
    from mlflow.server.auth.config import read_auth_config

    db = "postgresql+psycopg2://auth:p%40ss@db:5432/mlflow_auth"  # a URL-encoded database password has a %
    settings = auth.AuthSettings.from_env(_settings(**{auth.AUTH_DB_ENV: db, auth.DEFAULT_PERMISSION_ENV: permission}))
    path = auth.write_auth_config(tmp_path / "conf" / "basic_auth.ini", settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv(auth.CONFIG_PATH_ENV, str(path))
    for name in (auth.ADMIN_USER_ENV, auth.ADMIN_PASSWORD_ENV):  # MLflow would prefer these to the file
        monkeypatch.delenv(name, raising=False)
    read = read_auth_config()
    assert (read.admin_username, read.admin_password, read.database_uri) == (ADMIN, PASSWORD, db)
    assert read.default_permission == (permission or "NO_PERMISSIONS")
    assert read.authorization_function == auth.AUTHORIZATION_FUNCTION


def test_the_entrypoint_writes_the_ini_and_execs_the_basic_auth_server(tmp_path, monkeypatch):
    for name, value in {**_settings(), auth.SECRET_KEY_ENV: SECRET_KEY}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(auth.CONFIG_PATH_ENV, raising=False)
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append((path, argv, dict(os.environ))))
    auth.main(["--config", str(tmp_path / "a.ini"), "--", "--host", "0.0.0.0", "--port", "5000"])
    ((path, argv, env),) = calls
    assert argv[1:] == ["-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", "5000"]
    assert env[auth.CONFIG_PATH_ENV] == str(tmp_path / "a.ini")
    assert auth.ADMIN_PASSWORD_ENV not in env  # the server reads the checked value from the ini
    assert PASSWORD.replace("%", "%%") in (tmp_path / "a.ini").read_text()


@pytest.mark.parametrize(
    ("unset", "args", "message"),
    [
        (auth.SECRET_KEY_ENV, [], "MLFLOW_FLASK_SERVER_SECRET_KEY"),
        (auth.ADMIN_PASSWORD_ENV, [], "MLFLOW_AUTH_ADMIN_PASSWORD"),
        (None, ["--", "--app-name", "other"], "--app-name"),
    ],
)
def test_the_entrypoint_refuses_before_starting_anything(tmp_path, monkeypatch, capsys, unset, args, message):
    for name, value in {**_settings(), auth.SECRET_KEY_ENV: SECRET_KEY}.items():
        monkeypatch.setenv(name, value)
    if unset:
        monkeypatch.delenv(unset)
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("started a server"))
    with pytest.raises(SystemExit) as exit_info:
        auth.main(["--config", str(tmp_path / "a.ini"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "a.ini").exists()


# ---------------------------------------------------------------- a real basic-auth tracking server


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, server_runner):
    """``python -m components.auth`` serving MLflow with basic auth; tracking and auth stores in fresh PG databases."""
    psycopg2 = pytest.importorskip("psycopg2")
    suffix = uuid.uuid4().hex[:10]
    databases = {"tracking": f"medgan_test_track_{suffix}", "auth": f"medgan_test_auth_{suffix}"}
    try:
        pg = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:  # the service is part of the test environment: fail loudly
        pytest.fail(f"PostgreSQL at {PG_HOST}:{PG_PORT} is not reachable ({exc}); the auth tests need it")
    pg.autocommit = True
    for name in databases.values():
        pg.cursor().execute(f'CREATE DATABASE "{name}"')
    uri = {k: f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{v}" for k, v in databases.items()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tmp_path_factory.mktemp("auth-server")
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env.update(_settings(**{auth.AUTH_DB_ENV: uri["auth"]}), **{auth.SECRET_KEY_ENV: SECRET_KEY})
    # fmt: off
    command = [
        sys.executable, "-m", "components.auth", "--config", str(tmp / "basic_auth.ini"), "--",
        "--backend-store-uri", uri["tracking"], "--artifacts-destination", str(tmp / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    # fmt: on
    try:
        with server_runner(
            command, env, tmp / "server.log", f"http://127.0.0.1:{port}", "basic-auth mlflow server"
        ) as url:
            yield url
    finally:
        for name in databases.values():
            pg.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        pg.close()


@pytest.fixture
def anonymous(monkeypatch):
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def as_admin(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)


def _status(exc_info) -> int:
    return exc_info.value.get_http_status_code()


def test_an_unauthenticated_client_is_refused(auth_server, anonymous):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(f"{auth_server}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert http.value.code == 401
    client = MlflowClient(auth_server)
    with pytest.raises(MlflowException) as read:
        client.search_experiments()
    with pytest.raises(MlflowException) as write:
        client.create_run("0")
    assert _status(read) == _status(write) == 401
    with pytest.raises(TrackingAccessDenied, match="401.*no credentials were sent"):
        RunTracker(auth_server, "medgan-auth", "anonymous")


@pytest.mark.parametrize(
    ("user", "password"), [(ADMIN, PASSWORD + "x"), (ADMIN, "password1234"), ("admin", "password1234")]
)
def test_a_wrong_password_is_refused(auth_server, monkeypatch, user, password):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    with pytest.raises(MlflowException) as write:
        MlflowClient(auth_server).create_run("0")
    assert _status(write) == 401
    with pytest.raises(TrackingAccessDenied, match=f"401.*user '{user}' was not accepted"):
        RunTracker(auth_server, "medgan-auth", "wrong-password")


def test_with_admin_credentials_the_tracker_and_the_registry_work(auth_server, as_admin, tmp_path):
    tracker = RunTracker(auth_server, "medgan-auth", "admin-run")
    tracker.log_params({"train.steps": 10})
    tracker.log_metrics({"fid": 12.5}, step=3)
    model = tmp_path / "model"
    model.mkdir()
    (model / "generator.pt").write_bytes(b"weights")
    tracker.log_artifact(model, "model")
    tracker.log_dict({"fid": 12.5}, "eval/metrics.json")
    tracker.close("FINISHED")

    client = tracker.client
    run = client.get_run(tracker.run_id)
    assert run.data.params == {"train.steps": "10"} and run.data.metrics == {"fid": 12.5}
    assert run.info.status == "FINISHED"
    assert {f.path for f in client.list_artifacts(tracker.run_id, "model")} == {"model/generator.pt"}
    assert RunTracker(auth_server, "medgan-auth", "admin-run").run_id == tracker.run_id  # found again by its key

    name = f"medgan-generator-auth-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=tracker.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    assert client.get_model_version_by_alias(name, "champion").run_id == tracker.run_id


def test_a_user_without_a_grant_sees_none_of_the_pipelines_runs(auth_server, as_admin, monkeypatch):
    """The default permission is NO_PERMISSIONS: an account reads only what it created or was granted."""
    from mlflow.server import get_app_client

    RunTracker(auth_server, "medgan-auth-private", "admin-only")
    user, password = f"viewer-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    get_app_client("basic-auth", tracking_uri=auth_server).create_user(user, password)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    with pytest.raises(TrackingAccessDenied, match=f"403.*user '{user}' lacks the permission"):
        RunTracker(auth_server, "medgan-auth-private", "admin-only")


@pytest.mark.parametrize("credentials", [True, False], ids=["admin", "anonymous"])
def test_the_pipelines_first_component_runs_with_the_callers_credentials(
    auth_server, tmp_path, monkeypatch, credentials
):
    """kfp's SubprocessRunner components inherit MLFLOW_TRACKING_USERNAME/PASSWORD; without them the open-run
    stage stops with the user error the local runner reports (its MEDGAN_ERROR_FILE)."""
    import json

    from kfp import local
    from mlflow.tracking import MlflowClient

    from components.config import resolve
    from components.track.component import open_run_op

    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    if credentials:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MEDGAN_ERROR_FILE", str(tmp_path / "error.json"))
    monkeypatch.setattr(local.config.LocalExecutionConfig, "instance", None)  # restored: no local mode leaks out
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)
    tracking = {"tracking_uri": auth_server, "experiment": "medgan-auth", "run_key": f"component-{credentials}"}
    cfg = resolve("tiny")
    if not credentials:
        with pytest.raises(RuntimeError):
            open_run_op(config_json=cfg.to_json(), tracking_json=json.dumps(tracking), dataset_version_json="{}")
        error = json.loads((tmp_path / "error.json").read_text())
        assert (error["stage"], error["type"]) == ("open-run", "TrackingAccessDenied")
        assert "MLFLOW_TRACKING_USERNAME" in error["message"]
        return
    task = open_run_op(config_json=cfg.to_json(), tracking_json=json.dumps(tracking), dataset_version_json="{}")
    run = MlflowClient(auth_server).get_run(task.output)
    assert run.data.tags["medgan.run_key"] == "component-True"
    assert run.data.params["preset"] == cfg.preset
