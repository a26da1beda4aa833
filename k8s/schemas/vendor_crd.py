"""Vendor the OpenAPI v3 schema of an upstream CustomResourceDefinition for offline validation (tests/k8s).

``python k8s/schemas/vendor_crd.py CRD.yaml VERSION SOURCE > k8s/schemas/<kind>-<apiVersion>.json`` keeps the schema
of the CRD's served ``VERSION`` with every ``description`` removed (they are most of the bytes and validate nothing)
and records ``SOURCE`` (repository, tag, commit, path) beside it. k8s/schemas/README.md lists what is vendored.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def strip_descriptions(node: Any) -> Any:
    """The schema without ``description`` keywords (a property *named* description is kept)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
            else:
                out[key] = strip_descriptions(value)
        return out
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def vendor(crd_text: str, version: str, source: str) -> dict[str, Any]:
    """``{"source", "group", "kind", "version", "schema"}`` of ``version`` in the CRD document(s) ``crd_text``."""
    for doc in yaml.safe_load_all(crd_text):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        for served in doc["spec"]["versions"]:
            if served["name"] == version:
                return {
                    "source": source,
                    "group": doc["spec"]["group"],
                    "kind": doc["spec"]["names"]["kind"],
                    "version": version,
                    "schema": strip_descriptions(served["schema"]["openAPIV3Schema"]),
                }
    raise SystemExit(f"no CustomResourceDefinition with version {version!r} in the input")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    path, version, source = sys.argv[1:]
    with open(path) as fh:
        json.dump(vendor(fh.read(), version, source), sys.stdout, indent=None, sort_keys=True)
    sys.stdout.write("\n")
