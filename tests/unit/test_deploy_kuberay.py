"""deploy/kuberay: the RayService manifest and the image it runs, checked offline.

No PyPI package ships KubeRay's CRDs, so the RayService's own fields are checked against the
field names of KubeRay's ``ray.io/v1`` API types, listed below (unknown ones refused, required
ones present, ``rayStartParams`` values strings). What it embeds is checked against real
schemas: each pod template against Kubernetes' PodTemplateSpec (the OpenAPI schemas bundled in
``kubernetes-validate``, strict), and ``serveConfigV2`` against Ray's own ``ServeDeploySchema``,
with every key kept, and against what ``ptserve ray --print-config`` writes for the flags the
manifest names. Then the invariants that make the pieces fit are checked one by one.
"""

import copy
import importlib.resources
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from referencing import Registry, Resource

from ptserve.cli import main
from ptserve.integrations.ray_serve import RayCommandError, import_ray_app

try:
    ray_app = import_ray_app()
except RayCommandError:
    pytest.skip("the ray extra is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
KUBERAY_DIR = ROOT / "deploy" / "kuberay"
MANIFEST = KUBERAY_DIR / "rayservice.yaml"
DOCKERFILE = KUBERAY_DIR / "Dockerfile"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
K8S_VERSIONS = ("1.30.0", "1.37.0")
CORE = "https://kubernetes.io/api/_definitions.json"

# KubeRay's ray.io/v1 API (ray-operator/apis/ray/v1, master of August 2026): every field of the
# specs this manifest uses, and the required ones (json tags without omitempty).
RAY_SERVICE = {
    "fields": {
        "rayClusterDeletionDelaySeconds", "serviceUnhealthySecondThreshold",
        "deploymentUnhealthySecondThreshold", "serveService", "upgradeStrategy", "managedBy",
        "serveConfigV2", "rayClusterConfig", "excludeHeadPodFromServeSvc", "suspend",
    },
    "required": {"rayClusterConfig"},
}  # fmt: skip
RAY_CLUSTER = {
    "fields": {
        "upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
        "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
        "historyServerOptions", "networkPolicy", "tlsOptions", "headGroupSpec", "rayVersion",
        "workerGroupSpecs",
    },
    "required": {"headGroupSpec"},
}  # fmt: skip
HEAD_GROUP = {
    "fields": {
        "template", "headService", "enableIngress", "ingressOptions", "resources", "labels",
        "rayStartParams", "serviceType",
    },
    "required": {"template", "rayStartParams"},
}  # fmt: skip
WORKER_GROUP = {
    "fields": {
        "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
        "priority", "resources", "labels", "rayStartParams", "template", "scaleStrategy",
        "numOfHosts",
    },
    "required": {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"},
}  # fmt: skip

Manifest = dict[str, Any]


def load() -> Manifest:
    (document,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]
    assert isinstance(document, dict)
    return document


def spec_errors(value: Any, kind: dict[str, set[str]], at: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{at}: not a mapping"]
    unknown = sorted(set(value) - kind["fields"])
    missing = sorted(kind["required"] - set(value))
    return [f"{at}.{name}: unknown field" for name in unknown] + [
        f"{at}.{name}: required" for name in missing
    ]


def pod_template_errors(template: Any, version: str, at: str) -> list[str]:
    path = (
        importlib.resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{version}-local-strict"
        / "_definitions.json"
    )
    registry: Registry = Registry().with_resource(
        CORE, Resource.from_contents(json.loads(path.read_text()))
    )
    schema = {"$ref": f"{CORE}#/$defs/io.k8s.api.core.v1.PodTemplateSpec"}
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [
        f"{'.'.join([at, *map(str, error.absolute_path)])}: {error.message}"
        for error in validator.iter_errors(template)
    ]


def manifest_errors(manifest: Manifest, version: str) -> list[str]:
    """Every problem with a RayService: its own fields, then its pod templates' schemas."""
    errors = []
    if (manifest.get("apiVersion"), manifest.get("kind")) != ("ray.io/v1", "RayService"):
        errors.append("not a ray.io/v1 RayService")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"]):
        errors.append("metadata.name: not a DNS label")
    spec = manifest["spec"]
    errors += spec_errors(spec, RAY_SERVICE, "spec")
    cluster = spec.get("rayClusterConfig", {})
    errors += spec_errors(cluster, RAY_CLUSTER, "spec.rayClusterConfig")
    groups = [("headGroupSpec", cluster.get("headGroupSpec", {}), HEAD_GROUP)] + [
        (f"workerGroupSpecs.{i}", group, WORKER_GROUP)
        for i, group in enumerate(cluster.get("workerGroupSpecs", []))
    ]
    for where, group, kind in groups:
        at = f"spec.rayClusterConfig.{where}"
        errors += spec_errors(group, kind, at)
        for name, value in group.get("rayStartParams", {}).items():
            if not isinstance(value, str):
                errors.append(f"{at}.rayStartParams.{name}: must be a string")
        errors += pod_template_errors(group.get("template"), version, f"{at}.template")
    return errors


def serve_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(load()["spec"]["serveConfigV2"])
    return config


def cluster() -> dict[str, Any]:
    found: dict[str, Any] = load()["spec"]["rayClusterConfig"]
    return found


def containers() -> list[dict[str, Any]]:
    groups = [cluster()["headGroupSpec"], *cluster()["workerGroupSpecs"]]
    spec = [group["template"]["spec"] for group in groups]
    return [c for pod in spec for c in pod["containers"] + pod.get("initContainers", [])]


def worker() -> dict[str, Any]:
    (group,) = cluster()["workerGroupSpecs"]
    found: dict[str, Any] = group
    return found


def named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [item for item in items if item["name"] == name]
    return found


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# ---- the schemas ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_rayservice_has_kuberays_fields_and_valid_pod_templates(version: str) -> None:
    assert manifest_errors(load(), version) == []


MISTAKES: dict[str, Callable[[Manifest], None]] = {
    "misspelt spec field": lambda m: m["spec"].update(serveConfigv2=m["spec"]["serveConfigV2"]),
    "misspelt cluster field": lambda m: m["spec"]["rayClusterConfig"].update(rayversion="2"),
    "misspelt group field": lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(
        minReplica=1
    ),
    "missing group name": lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop(
        "groupName"
    ),
    "a number in rayStartParams": lambda m: m["spec"]["rayClusterConfig"]["headGroupSpec"][
        "rayStartParams"
    ].update({"num-cpus": 0}),
    "misspelt container field": lambda m: m["spec"]["rayClusterConfig"]["headGroupSpec"][
        "template"
    ]["spec"]["containers"][0].update(imagePullpolicy="Always"),
    "wrong type in the pod": lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0][
        "template"
    ]["spec"].update(terminationGracePeriodSeconds="45s"),
    "old API version": lambda m: m.update(apiVersion="ray.io/v1alpha1"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_checks_catch_mistakes(mistake: str) -> None:
    broken = copy.deepcopy(load())
    MISTAKES[mistake](broken)
    assert manifest_errors(broken, K8S_VERSIONS[0]) != []


def test_serve_config_is_what_ptserve_ray_prints(capsys: pytest.CaptureFixture[str]) -> None:
    from ray.serve.schema import ServeDeploySchema

    comment = [line.removeprefix("#").strip() for line in MANIFEST.read_text().splitlines()]
    start = next(i for i, line in enumerate(comment) if line.startswith("ptserve ray "))
    command = ""
    for line in comment[start:]:
        command += line.removesuffix("\\") + " "
        if not line.endswith("\\"):
            break
    argv = shlex.split(command)
    assert argv[:2] == ["ptserve", "ray"]
    assert argv[-1] == "--print-config"
    main(argv[1:])
    assert yaml.safe_load(capsys.readouterr().out) == serve_config()
    schema = ServeDeploySchema.model_validate(serve_config())
    assert schema.model_dump(mode="json", exclude_unset=True) == serve_config()


# ---- how the pieces fit ---------------------------------------------------------------------


def test_one_ray_version_everywhere() -> None:
    import ray

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = pyproject["project"]["optional-dependencies"]["ray"]
    assert pin == f"ray[serve]=={ray.__version__}"  # the version the tests ran on
    assert cluster()["rayVersion"] == ray.__version__
    assert f"'{pin}'" in DOCKERFILE.read_text()


def test_every_pod_runs_the_ray_image_as_its_non_root_user() -> None:
    images = {container["image"] for container in containers()}
    assert images == {"ptserve-ray:0.1.0"}
    assert "USER 10001:10001" in DOCKERFILE.read_text().splitlines()
    for group in [cluster()["headGroupSpec"], worker()]:
        security = group["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 10001


def test_the_proxies_listen_where_the_pods_expose_serve() -> None:
    http = serve_config()["http_options"]
    assert http["host"] == "0.0.0.0"  # the Service reaches the pods' addresses
    for group in [cluster()["headGroupSpec"], worker()]:
        for container in group["template"]["spec"]["containers"]:
            assert named(container["ports"], "serve")["containerPort"] == http["port"]


def test_worker_pods_can_hold_every_replica() -> None:
    (application,) = serve_config()["applications"]
    (deployment,) = application["deployments"]
    replica_cpus = deployment["ray_actor_options"]["num_cpus"]
    most = deployment["autoscaling_config"]["max_replicas"]
    assert cluster()["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # workers only
    assert cluster()["enableInTreeAutoscaling"] is True
    container = named(worker()["template"]["spec"]["containers"], "ray-worker")
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    pod_cpus = cpus(resources["limits"]["cpu"])
    assert pod_cpus == int(pod_cpus)  # whole cores: Ray counts them, torch threads follow
    per_pod = int(pod_cpus // replica_cpus)
    assert per_pod >= 1
    assert worker()["maxReplicas"] * per_pod >= most
    assert worker()["minReplicas"] * per_pod >= deployment["autoscaling_config"]["min_replicas"]


def test_a_stopping_replica_can_finish_its_drain() -> None:
    (application,) = serve_config()["applications"]
    (deployment,) = application["deployments"]
    grace = worker()["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > deployment["graceful_shutdown_timeout_s"]


def test_the_workers_volume_holds_the_model_the_replicas_serve(tmp_path: Path) -> None:
    (application,) = serve_config()["applications"]
    model_path = Path(application["args"]["model_path"])
    pod = worker()["template"]["spec"]
    server = named(pod["containers"], "ray-worker")
    mount = next(m for m in server["volumeMounts"] if m["mountPath"] == str(model_path.parent))
    assert mount.get("readOnly") is True
    assert mount["name"] in {volume["name"] for volume in pod["volumes"]}
    fetch = named(pod["initContainers"], "fetch-model")
    assert {"name": mount["name"], "mountPath": str(model_path.parent)} in fetch["volumeMounts"]
    program, flag, code = fetch["command"]
    assert (program, flag) == ("python", "-c")
    target = f'"{model_path.parent}"'
    assert target in code
    subprocess.run(
        [sys.executable, "-c", code.replace(target, repr(str(tmp_path)))], check=True, timeout=120
    )
    assert (tmp_path / model_path.name).is_file()


def test_the_deploy_doc_says_what_was_checked() -> None:
    text = DEPLOY_DOC.read_text()
    for path in KUBERAY_DIR.iterdir():
        assert str(path.relative_to(ROOT)) in text, path.name
    assert "No PyPI package ships KubeRay's CRD" in " ".join(text.split())  # across line breaks
