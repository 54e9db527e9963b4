"""Policy checks on the rendered manifests: what the serving and training objects must agree on
with each other and with the code (flags, env variables, health service names, ports)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from services.config import ServeConfig
from services.server import SERVICES
from trainer.cli import build_parser
from trainer.config import resolve
from trainer.storage import is_uri

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
OVERLAYS = ["overlays/dev", "overlays/prod"]
PINNED = re.compile(r"^[\w./-]+:(?!latest$)[\w.-]*\d[\w.-]*$|@sha256:[0-9a-f]{64}$")


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_specs(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = []
    for o in objs:
        if o["kind"] == "Deployment":
            specs.append(o["spec"]["template"]["spec"])
        elif o["kind"] in ("RayJob", "RayCluster"):
            spec = o["spec"].get("rayClusterSpec", o["spec"])
            groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
            specs += [g["template"]["spec"] for g in groups]
    return specs


TRAINING = ["training", "training/interactive", "training/object-storage"]


@pytest.mark.parametrize("name", ["base", *OVERLAYS, *TRAINING])
def test_containers_have_pinned_images_limits_and_run_as_non_root(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    specs = pod_specs(rendered[name])
    assert specs
    for spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            assert PINNED.search(c["image"]), f"{c['image']} is not pinned to a version"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{c['name']} {kind}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_task_deployment_probes_its_own_health_service(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    deployments = by_kind(rendered[overlay], "Deployment")
    assert set(deployments) == {f"recur-serve-{task}" for task in SERVICES}
    for task, service in SERVICES.items():
        pod = deployments[f"recur-serve-{task}"]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        secure = overlay == "overlays/prod"  # components/secure: TLS, auth, plaintext probes
        health = {"health": 8081} if secure else {}
        assert ports == {"grpc": 50051, "metrics": 9464, **health}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = 8081 if secure else 50051
            assert c[probe]["grpc"] == {"port": port, "service": service}, (task, probe)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        models = next(m for m in c["volumeMounts"] if m["name"] == "models")
        assert (models["mountPath"], models["subPath"]) == (f"/models/{task}", task)
        claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
        assert claim["claimName"] == "recur-models"
        secrets = [v["secret"] for v in pod["volumes"] if "secret" in v]
        assert secrets and all(s["optional"] is not secure for s in secrets)


def test_the_secure_component_points_recur_serve_at_its_secrets(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    settings = by_kind(rendered["overlays/prod"], "ConfigMap")["recur-serve-config"]["data"]
    assert settings["RECUR_TLS_CERT_FILE"] == "/etc/recur/tls/tls.crt"
    assert settings["RECUR_TLS_KEY_FILE"] == "/etc/recur/tls/tls.key"
    assert settings["RECUR_AUTH_TOKEN_FILE"] == "/etc/recur/auth/token"
    assert settings["RECUR_HEALTH_PORT"] == "8081"
    for deployment in by_kind(rendered["overlays/prod"], "Deployment").values():
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert (mounts["tls"], mounts["auth"]) == ("/etc/recur/tls", "/etc/recur/auth")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_pre_stop_and_drain(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    env = by_kind(rendered[overlay], "ConfigMap")["recur-serve-config"]["data"]
    assert set(env) <= {f"RECUR_{f.name.upper()}" for f in fields(ServeConfig)}, "unknown setting"
    grace = float(env["RECUR_GRACE_SECONDS"])
    assert env["RECUR_MODELS"] == "/models"
    for d in by_kind(rendered[overlay], "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + 1
        liveness = c["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_hpas_pdbs_and_route_point_at_the_deployments(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    deployments = by_kind(objs, "Deployment")
    labels = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items()}

    def selects(selector: dict[str, str]) -> list[str]:
        return [n for n, lab in labels.items() if selector.items() <= lab.items()]

    for name, svc in by_kind(objs, "Service").items():
        assert selects(svc["spec"]["selector"]) == [name]
        assert {p["name"] for p in svc["spec"]["ports"]} == {"grpc", "metrics"}
    for name, pdb in by_kind(objs, "PodDisruptionBudget").items():
        assert selects(pdb["spec"]["selector"]["matchLabels"]) == [name]
    hpas = by_kind(objs, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == set(deployments)
    for hpa in hpas.values():
        metrics = {
            m["resource"]["name"] if m["type"] == "Resource" else m["pods"]["metric"]["name"]
            for m in hpa["spec"]["metrics"]
        }
        assert metrics == {"cpu", "recur_streams_active"}
    (route,) = by_kind(objs, "GRPCRoute").values()
    rules = route["spec"]["rules"]
    routed = {rule["matches"][0]["method"]["service"]: rule["backendRefs"][0] for rule in rules}
    assert routed == {s: {"name": f"recur-serve-{t}", "port": 50051} for t, s in SERVICES.items()}
    assert route["spec"]["parentRefs"][0]["name"] in by_kind(objs, "Gateway")
    (monitor,) = by_kind(objs, "PodMonitor").values()
    assert len(selects(monitor["spec"]["selector"]["matchLabels"])) == 3
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_rayjob_runs_the_trainer_into_the_serving_volume(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (job,) = rendered["training"]
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "trainer"]
    args = build_parser().parse_args(argv[3:])  # exits on a flag the trainer does not have
    cfg = resolve(vars(args), environ={})
    assert (cfg.out, cfg.run_dir, cfg.task) == ("/models", "/runs", "translation")
    assert cfg.run_name, "a fixed --run-name, so a retried job reuses its Ray Train run"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in head["volumes"]}
    assert claims[mounts["/models"]] == "recur-models"  # what the Deployments mount
    assert claims[mounts["/runs"]] == "recur-runs"
    workers = sum(g["replicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    assert workers >= cfg.workers


def test_object_storage_rayjob_differs_from_the_volume_one_only_in_run_storage(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The two training jobs are alternatives: the same job but for where Ray Train's storage is."""
    (volume,) = rendered["training"]
    (bucket,) = rendered["training/object-storage"]
    args = build_parser().parse_args(shlex.split(bucket["spec"]["entrypoint"])[3:])
    run_dir = resolve(vars(args), environ={}).run_dir
    assert is_uri(run_dir) and run_dir.startswith("s3://"), run_dir
    for spec in pod_specs([bucket]):
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])}
        assert "recur-runs" not in claims
        (container,) = spec["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "recur-run-storage"}}]

    def storage_free(job: dict[str, Any]) -> dict[str, Any]:
        job = json.loads(json.dumps(job))
        job["spec"]["entrypoint"] = re.sub(r"--run-dir \S+", "", job["spec"]["entrypoint"])
        for spec in pod_specs([job]):
            spec["volumes"] = [v for v in spec.get("volumes", []) if v["name"] != "runs"]
            for c in spec["containers"]:
                c.pop("envFrom", None)
                c["volumeMounts"] = [m for m in c.get("volumeMounts", []) if m["name"] != "runs"]
        return job

    assert storage_free(bucket) == storage_free(volume)


@pytest.mark.parametrize("name", TRAINING)
def test_ray_version_matches_image_tags_and_constraints(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    (obj,) = rendered[name]
    spec = obj["spec"].get("rayClusterSpec", obj["spec"])
    assert f"ray=={spec['rayVersion']}" in CONSTRAINTS.read_text().split()
    for pod in pod_specs([obj]):
        for c in pod["containers"]:
            assert c["image"].rsplit(":", 1)[1].startswith(spec["rayVersion"] + "-"), c["image"]
