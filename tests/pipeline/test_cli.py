import subprocess
import sys

import pytest
import yaml

from pipeline.cli import main


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["run", "--data", "{tmp}/nope"], "does not exist"),
        ("empty", ["run", "--data", "{tmp}/d"], "labels.csv is empty"),
        ("nolabels", ["run", "--data", "{tmp}/d"], "labels.csv not found"),
        (None, ["run", "--preset", "quikstart"], "unknown preset 'quikstart'"),
        (None, ["config", "--set", "train.stepz=1"], "did you mean steps"),
        ("empty", ["run", "--data", "{tmp}/d", "--set", "train.g_arch=gan9000"], "train.g_arch must be one of"),
    ],
)
def test_user_mistakes_get_one_clear_line(tmp_path, capsys, setup, args, message):
    if setup:
        (tmp_path / "d").mkdir()
        if setup == "empty":
            (tmp_path / "d" / "labels.csv").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--project-dir", str(tmp_path)] * (args[0] == "run")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_console_script_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--data", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_compile_for_a_kubernetes_launcher(tmp_path):
    out = tmp_path / "k8s.yaml"
    main(["compile", "--out", str(out), "--preset", "ct-128", "--set", "train.launcher=trainjob"])
    platform = list(yaml.safe_load_all(out.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]
    # the train task's volume, in the platform config
    assert platform["executors"]["exec-train-op"]["pvcMount"][0]["constant"] == "medgan-data"
    local = tmp_path / "local.yaml"
    main(["compile", "--out", str(local)])
    platform = list(yaml.safe_load_all(local.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]
    assert "pvcMount" not in platform["executors"]["exec-train-op"]  # train.launcher=local trains in the task
