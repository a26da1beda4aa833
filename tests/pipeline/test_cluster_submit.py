"""`medgan submit` / `medgan schedule` against a stand-in for the Kubeflow Pipelines API.

There is no KFP API server here: :class:`FakeKfp` is a small HTTP server on 127.0.0.1 that implements the few KFP
v2beta1 REST endpoints the commands use (healthz, experiments, runs, recurring runs with enable/disable/delete),
keeps their state in memory and records every request. The real ``kfp.Client`` talks to it over HTTP, so what is
checked is what a KFP server would receive; not checked: the server's own validation, scheduling and execution.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.cli import main

API = "/apis/v2beta1"
TRACKING = "tracking.tracking_uri=http://mlflow.medgan.svc:5000"


class FakeKfp(ThreadingHTTPServer):
    """In-memory KFP v2beta1: experiments, runs, recurring runs; ``requests`` lists (method, path, query, body)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict, dict, dict]] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def calls(self, method: str, prefix: str) -> list[tuple]:
        return [r for r in self.requests if r[0] == method and r[1].startswith(API + prefix)]


class _Handler(BaseHTTPRequestHandler):
    server: FakeKfp

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        srv = self.server
        headers = {k.lower(): v for k, v in self.headers.items()}
        srv.requests.append((method, parts.path, query, body, headers))
        path = parts.path.removeprefix(API)
        if path == "/healthz":
            return self._reply(200, {"multi_user": False})
        if path == "/experiments" and method == "GET":
            name = _filter_name(query)
            found = [e for e in srv.experiments.values() if name in (None, e["display_name"])]
            return self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
        if path == "/experiments" and method == "POST":
            exp = {**body, "experiment_id": str(uuid.uuid4())}
            srv.experiments[exp["experiment_id"]] = exp
            return self._reply(200, exp)
        if path == "/runs" and method == "POST":
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
            srv.runs[run["run_id"]] = run
            return self._reply(200, run)
        if path == "/recurringruns" and method == "GET":
            name = _filter_name(query)
            found = [
                r
                for r in srv.recurring.values()
                if r["experiment_id"] == query.get("experiment_id") and name in (None, r["display_name"])
            ]
            return self._reply(200, {"recurringRuns": found, "total_size": len(found)} if found else {})
        if path == "/recurringruns" and method == "POST":
            rec = {**body, "recurring_run_id": str(uuid.uuid4())}
            rec["status"] = "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED"
            srv.recurring[rec["recurring_run_id"]] = rec
            return self._reply(200, rec)
        if path.startswith("/recurringruns/"):
            rid, _, verb = path.removeprefix("/recurringruns/").partition(":")
            if rid not in srv.recurring:
                return self._reply(404, {"error": f"recurring run {rid} not found", "code": 5})
            if method == "DELETE":
                del srv.recurring[rid]
                return self._reply(200, {})
            if method == "POST" and verb in ("enable", "disable"):
                srv.recurring[rid]["status"] = "ENABLED" if verb == "enable" else "DISABLED"
                return self._reply(200, {})
            if method == "GET":
                return self._reply(200, srv.recurring[rid])
        return self._reply(404, {"error": f"{method} {parts.path} is not implemented by the stand-in", "code": 12})

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


def _filter_name(query: dict) -> str | None:
    if "filter" not in query:
        return None
    (predicate,) = json.loads(query["filter"])["predicates"]
    assert predicate["key"] == "display_name" and predicate["operation"] in ("EQUALS", 1)  # 1: the enum's number
    return predicate.get("stringValue", predicate.get("string_value"))


@pytest.fixture
def kfp(monkeypatch, tmp_path):
    server = FakeKfp()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", server.url)
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "test-token")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # kfp.Client reads ~/.config/kfp/context.json
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def data(tmp_path):
    """A data folder with the DVC pointer `medgan phantom` + `dvc add` would leave beside it."""
    folder = tmp_path / "project/data"
    folder.mkdir(parents=True)
    (folder / "labels.csv").write_text("file,label\n")
    pointer = (
        "outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  size: 1000\n  nfiles: 10\n  hash: md5\n  path: data\n"
    )
    (folder.parent / "data.dvc").write_text(pointer)
    return folder


def _params(body: dict) -> dict:
    return body["runtime_config"]["parameters"]


def test_submit_starts_one_run_with_the_pinned_dataset_and_the_credentials_of_the_environment(kfp, data, capsys):
    argv = ["submit", "--data", str(data), "--dvc-remote", "s3://bucket/dvc", "--preset", "ct-128", "--set", TRACKING]
    assert main([*argv, "--service-account", "medgan-trainer", "--run-name", "nightly"]) == 0
    (post,) = kfp.calls("POST", "/runs")
    _, _, _, body, headers = post
    assert headers["authorization"] == "Bearer test-token"
    assert body["display_name"] == "nightly" and body["service_account"] == "medgan-trainer"
    (exp,) = kfp.experiments.values()
    assert exp["display_name"] == "medgan" and body["experiment_id"] == exp["experiment_id"]
    params = _params(body)
    lineage = json.loads(params["dataset_version_json"])
    assert lineage["md5"] == "0123456789abcdef0123456789abcdef.dir" and lineage["nfiles"] == 10
    assert params["dvc_remote"] == "s3://bucket/dvc" and params["dataset_repo"] == ""
    assert json.loads(params["tracking_json"]) == {
        "tracking_uri": "http://mlflow.medgan.svc:5000",
        "experiment": "medgan",
        "run_key": "",  # the run context task makes it kfp-<run id>
    }
    assert json.loads(params["config_json"])["preset"] == "ct-128"
    # the compiled cluster pipeline travels inline, with its Kubernetes platform config
    spec = body["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "medgan-ops"
    assert "exec-pull-data-op" in spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # the pinned dataset gives the pure stages their cross-run cache key
    train = spec["pipeline_spec"]["components"]["comp-exit-handler-1"]["dag"]["tasks"]["train-op"]
    assert train["cachingOptions"]["enableCache"] is True and train["cachingOptions"]["cacheKey"].endswith("-train")
    assert "submitted run" in capsys.readouterr().out
    # a second submit reuses the experiment
    assert main(argv) == 0
    assert len(kfp.calls("POST", "/runs")) == 2 and len(kfp.calls("POST", "/experiments")) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "tracking.tracking_uri="], "a cluster run logs to a tracking server"),
        (["--data", "/nonexistent/untracked", "--set", TRACKING], "is not tracked by DVC"),
        (["--set", TRACKING], "not reachable from a cluster"),  # no remote given, none in a DVC project
        (["--dvc-remote", "../.dvc-storage", "--set", TRACKING], "not reachable from a cluster"),
    ],
)
def test_submit_refuses_a_run_the_cluster_could_not_do_before_calling_the_api(kfp, data, capsys, argv, message):
    argv = ["--data", str(data), *argv] if "--data" not in argv else argv
    assert main(["submit", *argv]) == 2
    assert message in capsys.readouterr().err
    assert kfp.requests == []


def test_the_default_dvc_remote_is_the_projects(kfp, tmp_path, capsys):
    project = tmp_path / "dvcproject"
    (project / "data").mkdir(parents=True)
    (project / "data/labels.csv").write_text("file,label\n")
    for args in (["init", "--no-scm", "-q"], ["remote", "add", "-d", "storage", "s3://team-bucket/medgan"]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, check=True, capture_output=True)
    (project / "data.dvc").write_text("outs:\n- md5: 00000000000000000000000000000000.dir\n  path: data\n")
    assert main(["submit", "--data", str(project / "data"), "--set", TRACKING]) == 0
    (post,) = kfp.calls("POST", "/runs")
    assert _params(post[3])["dvc_remote"] == "s3://team-bucket/medgan"


def _schedule(*extra: str) -> int:
    repo = ["--dataset-repo", "https://git.example.org/lab/medgan-data.git", "--dataset-rev", "main"]
    return main(["schedule", "--name", "weekly", *repo, "--set", TRACKING, *extra])


def test_schedule_is_idempotent_by_name_and_updates_pauses_resumes_and_deletes(kfp, capsys):
    assert _schedule("--cron", "0 3 * * 1") == 0
    (rec,) = kfp.recurring.values()
    assert rec["display_name"] == "weekly" and rec["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert int(rec["max_concurrency"]) == 1 and rec["no_catchup"] is True and rec["mode"] == "ENABLE"
    params = _params(rec)
    assert params["dataset_repo"].endswith("medgan-data.git") and params["dataset_rev"] == "main"
    assert params["dataset_version_json"] == "{}"  # each run pulls the repository's version of that day
    first_id = rec["recurring_run_id"]
    assert "created" in capsys.readouterr().out

    # the same schedule again: nothing is created or deleted
    assert _schedule("--cron", "0 3 * * 1") == 0
    assert "unchanged" in capsys.readouterr().out
    assert len(kfp.calls("POST", "/recurringruns")) == 1 and not kfp.calls("DELETE", "/recurringruns")
    assert list(kfp.recurring) == [first_id]

    # a changed schedule (or config) replaces it: one recurring run of that name, never two
    assert _schedule("--cron", "0 4 * * 1") == 0
    assert "updated" in capsys.readouterr().out
    (rec,) = kfp.recurring.values()
    assert rec["recurring_run_id"] != first_id and rec["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * 1"
    assert _schedule("--cron", "0 4 * * 1", "--set", "train.steps=30000") == 0
    assert "updated" in capsys.readouterr().out and len(kfp.recurring) == 1

    # pause, then scheduling it again resumes it
    assert _schedule("--pause") == 0
    (rec,) = kfp.recurring.values()
    assert rec["status"] == "DISABLED" and "paused" in capsys.readouterr().out
    assert _schedule("--cron", "0 4 * * 1", "--set", "train.steps=30000") == 0
    assert "resumed" in capsys.readouterr().out and rec["status"] == "ENABLED"
    assert kfp.calls("POST", f"/recurringruns/{rec['recurring_run_id']}:enable")

    # delete, twice
    assert _schedule("--delete") == 0
    assert kfp.recurring == {} and "deleted" in capsys.readouterr().out
    assert _schedule("--delete") == 0
    assert "absent" in capsys.readouterr().out


def test_schedule_refuses_bad_requests_clearly(kfp, capsys):
    assert _schedule() == 2
    assert "needs --cron" in capsys.readouterr().err
    assert _schedule("--cron", "every monday") == 2
    assert "give 5 fields" in capsys.readouterr().err
    assert _schedule("--pause") == 2
    assert "no recurring run called 'weekly'" in capsys.readouterr().err
    assert kfp.recurring == {}


def test_an_unreachable_endpoint_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    Path(tmp_path / "data.dvc").write_text("outs:\n- md5: 00000000000000000000000000000000.dir\n  path: data\n")
    assert main(["submit", "--data", str(data), "--dvc-remote", "s3://b/p", "--set", TRACKING]) == 2
    assert "KF_PIPELINES_ENDPOINT" in capsys.readouterr().err
