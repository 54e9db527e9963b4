"""Every object deploy/k8s renders validates offline: built-in kinds against the Kubernetes
schemas that kubernetes-validate bundles, custom resources against crd_schemas.yaml, and the pod
templates inside RayJob/RayCluster against the real core/v1 PodTemplate schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

KUBERNETES_VERSION = "1.33"  # the oldest version deploy/README.md supports
CRD_SCHEMAS = yaml.safe_load((Path(__file__).parent / "crd_schemas.yaml").read_text())
CUSTOM_KINDS = set(CRD_SCHEMAS["kinds"])


def kind_key(obj: dict[str, Any]) -> str:
    return f"{obj['apiVersion']}/{obj['kind']}"


def ray_pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"].get("rayClusterSpec", obj["spec"])
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def k8s_validate(obj: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate (bundles the Kubernetes JSON schemas) is not installed",
    )
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_kustomization_renders(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {name: sorted({o["kind"] for o in objs}) for name, objs in rendered.items()}
    assert kinds["training"] == ["RayJob"]
    assert kinds["training/interactive"] == ["RayCluster"]
    assert kinds["training/object-storage"] == ["RayJob"]
    for overlay in ("overlays/dev", "overlays/prod"):
        assert kinds[overlay] == [
            "ConfigMap", "Deployment", "GRPCRoute", "Gateway", "HorizontalPodAutoscaler",
            "Namespace", "PersistentVolumeClaim", "PodDisruptionBudget", "PodMonitor", "Service",
        ]  # fmt: skip


def test_built_in_kinds_validate_against_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    checked = 0
    for name, objs in rendered.items():
        for obj in objs:
            if kind_key(obj) not in CUSTOM_KINDS:
                try:
                    k8s_validate(obj)
                except Exception as error:
                    raise AssertionError(
                        f"{name}: {obj['kind']}/{obj['metadata']['name']}: "
                        f"{getattr(error, 'message', error)}"
                    ) from None
                checked += 1
    assert checked >= 2 * 17  # both overlays: 3 x (Deployment, Service, HPA, PDB) + 5 more


def test_custom_resources_validate_against_crd_schemas(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    seen = set()
    for objs in rendered.values():
        for obj in objs:
            if kind_key(obj) in CUSTOM_KINDS:
                schema = {"$defs": CRD_SCHEMAS["$defs"], **CRD_SCHEMAS["kinds"][kind_key(obj)]}
                jsonschema.validate(obj, schema)
                seen.add(kind_key(obj))
    assert seen == CUSTOM_KINDS


@pytest.mark.parametrize(
    "typo, reason",
    [
        ({"shutdownAfterJobFinish": True}, "a misspelt field"),
        ({"backoffLimit": "2"}, "a string where the CRD wants an integer"),
    ],
)
def test_crd_schemas_catch_mistakes(
    rendered: dict[str, list[dict[str, Any]]], typo: dict[str, Any], reason: str
) -> None:
    (rayjob,) = rendered["training"]
    broken = {**rayjob, "spec": {**rayjob["spec"], **typo}}
    schema = {"$defs": CRD_SCHEMAS["$defs"], **CRD_SCHEMAS["kinds"]["ray.io/v1/RayJob"]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("name", ["training", "training/interactive", "training/object-storage"])
def test_ray_pod_templates_validate_as_pod_templates(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    (obj,) = rendered[name]
    for template in ray_pod_templates(obj):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": "ray"}, "template": template}  # fmt: skip
        k8s_validate(wrapped)


def test_the_validator_rejects_a_broken_deployment(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Guards against a validator that passes everything (e.g. an unknown kind)."""
    deployment = next(o for o in rendered["overlays/dev"] if o["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    with pytest.raises(Exception, match="grpc"):
        k8s_validate(broken)
