"""The deployment files (deploy/) against their published schemas, offline: the Compose
specification's schema as vendored by check-jsonschema, and Kubernetes' own schemas as shipped
by kubernetes-validate (strict: no field the API does not know)."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import kubernetes_validate
import pytest
import yaml

from helpers import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.30"


def _compose_schema() -> dict:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def test_the_compose_file_follows_the_compose_specification():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    jsonschema.validate(compose, _compose_schema())
    services = compose["services"]
    assert set(services) == {"engine", "banditd", "locust"}
    assert services["banditd"]["deploy"]["replicas"] == 3
    assert services["banditd"]["environment"]["BANDITD_REDIS_URL"].startswith("redis://engine:")
    assert "--appendonly" in services["engine"]["command"]


def test_a_broken_compose_file_is_refused_by_the_schema():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    service = compose["services"]["banditd"]
    service["enviroment"] = service.pop("environment")  # misspelt
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(compose, _compose_schema())


def _resources() -> list[dict]:
    out = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        out += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def test_the_kubernetes_manifests_follow_the_kubernetes_schemas():
    docs = _resources()
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert kinds == {("Deployment", "banditd"), ("Service", "banditd"),
                     ("StatefulSet", "banditd-engine"), ("Service", "banditd-engine")}
    engine = next(d for d in docs if d["kind"] == "StatefulSet")
    assert engine["spec"]["volumeClaimTemplates"]  # the append-only file on a volume
    assert "--appendonly" in engine["spec"]["template"]["spec"]["containers"][0]["args"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "BANDITD_REDIS_URL" in env


def test_a_misspelt_kubernetes_field_is_refused():
    deployment = next(d for d in _resources() if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = 3  # not "replicas"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
