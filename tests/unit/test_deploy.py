"""The deployment files: the Dockerfile, deploy/kubernetes and deploy/kserve.

No Docker engine or cluster is needed or used. The Kubernetes manifests are validated offline
against the OpenAPI schemas bundled in the ``kubernetes-validate`` package, in strict mode (an
unknown or misspelt field is an error). KServe's CRDs are not in those schemas and no PyPI
package ships them, so the KServe resources are validated against
deploy/kserve/kserve.schema.json, written from KServe's API types (every field of the specs we
use, strict), whose embedded core objects (Container, Volume, ObjectMeta, ...) refer to the same
Kubernetes schemas. Then the invariants that make the pieces fit together are checked one by
one, and the two snippets of code the files carry (the image's HEALTHCHECK, the initContainer
that provides the model) are run.
"""

import copy
import fnmatch
import http.server
import importlib.resources
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from referencing import Registry, Resource

from ptserve.settings import Settings
from tests.guards import COMMAND_S, hang_guard

Manifest = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
KSERVE_DIR = ROOT / "deploy" / "kserve"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# The oldest Kubernetes minor the manifests promise to work on, and the newest schema bundled.
K8S_VERSIONS = ("1.30.0", "1.37.0")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
KSERVE_PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]  # KServe's InferenceServiceProtocol
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the model


# ---- loading --------------------------------------------------------------------------------


def load_manifests(directory: Path) -> list[tuple[str, Manifest]]:
    """(file name, object) for every YAML document under ``directory`` but the kustomization."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert isinstance(document, dict), f"{path.name}: not a mapping"
                found.append((path.name, document))
    return found


KUBERNETES = load_manifests(KUBERNETES_DIR)
KSERVE = load_manifests(KSERVE_DIR)


def ids(manifests: list[tuple[str, Manifest]]) -> list[str]:
    return [f"{source}:{manifest.get('kind')}" for source, manifest in manifests]


def one(kind: str, manifests: list[tuple[str, Manifest]] = KUBERNETES + KSERVE) -> Manifest:
    matches = [manifest for _, manifest in manifests if manifest["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matches = [item for item in items if item["name"] == name]
    assert len(matches) == 1, f"expected one item named {name!r}, found {len(matches)}"
    return matches[0]


def server_container() -> dict[str, Any]:
    return named(pod_spec()["containers"], "ptserve")


def runtime_container() -> dict[str, Any]:
    return named(one("ServingRuntime")["spec"]["containers"], "kserve-container")


SERVERS = {"deployment": server_container, "servingruntime": runtime_container}


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def env_value(container: dict[str, Any], name: str) -> str:
    entry = env(container)[name]
    assert "value" in entry, f"{name} must be a literal value"
    value: str = entry["value"]
    return value


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    """The container port that a probe or Service port (a number or a port name) points at."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            number: int = declared["containerPort"]
            return number
    raise AssertionError(f"port {port!r} is not a port of container {container['name']!r}")


QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
SCALE = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}


def quantity(value: str | int) -> Decimal:
    """A Kubernetes resource quantity ("500m", "2", "1Gi") as a number; the schemas accept any
    string here, so a malformed one is caught by this parser."""
    match = QUANTITY.match(str(value))
    assert match, f"not a Kubernetes quantity this repo uses: {value!r}"
    return Decimal(match[1]) * SCALE[match[2]]


# ---- Kubernetes schemas (offline, from the kubernetes-validate package) ---------------------


def test_the_expected_resources_are_there() -> None:
    assert sorted(m["kind"] for _, m in KUBERNETES) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    assert sorted(m["kind"] for _, m in KSERVE) == ["InferenceService", "ServingRuntime"]
    for source, manifest in KUBERNETES + KSERVE:
        assert manifest["metadata"]["name"], f"{source}: {manifest['kind']} has no name"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("source", "manifest"), KUBERNETES, ids=ids(KUBERNETES))
def test_manifest_matches_the_kubernetes_schema(
    version: str, source: str, manifest: Manifest
) -> None:
    try:
        validated = kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{source}: {manifest['kind']} at {where}: {exc.message}")
    assert validated == version.rsplit(".", 1)[0]  # that exact schema, not an older fallback


MISTAKES: dict[str, Callable[[Manifest], None]] = {
    "misspelt field": lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
        readinesProbe={"httpGet": {"path": "/health/ready", "port": 8000}}
    ),
    "wrong type": lambda d: d["spec"].update(replicas="two"),
    "probe without port": lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"][
        "httpGet"
    ].pop("port"),
    "missing required field": lambda d: d["spec"]["template"]["spec"].pop("containers"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_schema_check_catches_mistakes(mistake: str) -> None:
    broken = copy.deepcopy(one("Deployment"))
    MISTAKES[mistake](broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_validation_runs_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The schemas ship inside the package and every $ref resolves within it: with the network
    cut off, validation still works."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for version in K8S_VERSIONS:
        assert core_definitions(version).contents["$id"] == CORE
        for _, manifest in KUBERNETES:
            kubernetes_validate.validate(manifest, version, strict=True)
        for _, manifest in KSERVE:
            assert kserve_errors(manifest, version) == []


# ---- KServe: deploy/kserve/kserve.schema.json, core objects by $ref ------------------------

CORE = "https://kubernetes.io/api/_definitions.json"  # the $id of the bundled definitions
KSERVE_SCHEMA: dict[str, Any] = json.loads((KSERVE_DIR / "kserve.schema.json").read_text())
PREDICTOR_FIELDS = KSERVE_SCHEMA["$defs"]["PredictorSpec"]["properties"]
MODEL_FIELDS = KSERVE_SCHEMA["$defs"]["ModelSpec"]["properties"]
# PredictorSpec's one-of: exactly one of these says what serves the model.
PREDICTOR_IMPLEMENTATIONS = [
    *("model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx"),
    *("huggingface", "pmml", "lightgbm", "paddle"),
]


def core(name: str) -> dict[str, str]:
    return {"$ref": f"{CORE}#/$defs/io.k8s.api.core.v1.{name}"}


def core_definitions(version: str) -> Resource:
    """The Kubernetes definitions that kubernetes-validate bundles for ``version`` (strict)."""
    path = (
        importlib.resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{version}-local-strict"
        / "_definitions.json"
    )
    return Resource.from_contents(json.loads(path.read_text()))


def kserve_errors(manifest: Manifest, version: str) -> list[str]:
    """Every schema error of a KServe resource, as "path: message"."""
    registry: Registry = Registry().with_resource(CORE, core_definitions(version))

    def check(instance: Any, schema: dict[str, Any], at: str) -> list[str]:
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        return [
            f"{'.'.join([at, *map(str, error.absolute_path)])}: {error.message}"
            for error in validator.iter_errors(instance)
        ]

    errors = check(manifest, KSERVE_SCHEMA, manifest["kind"])
    if manifest["kind"] == "InferenceService" and not errors:
        # The inlined core types: what is not a KServe field must be a PodSpec / Container field.
        predictor = manifest["spec"]["predictor"]
        pod = {
            "containers": [],
            **{k: v for k, v in predictor.items() if k not in PREDICTOR_FIELDS},
        }
        errors += check(pod, core("PodSpec"), "spec.predictor")
        if "model" in predictor:
            model = predictor["model"]
            container = {
                "name": "kserve-container",
                **{k: v for k, v in model.items() if k not in MODEL_FIELDS},
            }
            errors += check(container, core("Container"), "spec.predictor.model")
    return errors


def test_the_kserve_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(KSERVE_SCHEMA)
    assert set(PREDICTOR_IMPLEMENTATIONS) <= PREDICTOR_FIELDS.keys()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("source", "manifest"), KSERVE, ids=ids(KSERVE))
def test_kserve_resource_matches_its_schema(version: str, source: str, manifest: Manifest) -> None:
    assert kserve_errors(manifest, version) == [], source


KSERVE_MISTAKES: dict[str, tuple[str, Callable[[Manifest], None]]] = {
    "unknown protocol": ("ServingRuntime", lambda d: d["spec"].update(protocolVersions=["v3"])),
    "misspelt spec field": (
        "ServingRuntime",
        lambda d: d["spec"].update(supportedModelFormat=[{"name": "pytorch"}]),
    ),
    "misspelt container field": (
        "ServingRuntime",
        lambda d: d["spec"]["containers"][0].update(readinessprobe={}),
    ),
    "priority below 1": (
        "ServingRuntime",
        lambda d: d["spec"]["supportedModelFormats"][0].update(priority=0),
    ),
    "protocol in capitals": (
        "InferenceService",
        lambda d: d["spec"]["predictor"]["model"].update(protocolVersion="V2"),
    ),
    "misspelt model field": (
        "InferenceService",
        lambda d: d["spec"]["predictor"]["model"].update(storageURI="s3://b/m"),
    ),
    "misspelt predictor field": (
        "InferenceService",
        lambda d: d["spec"]["predictor"].update(minReplica=1),
    ),
    "name not a DNS label": ("InferenceService", lambda d: d["metadata"].update(name="Digits")),
}


@pytest.mark.parametrize("mistake", KSERVE_MISTAKES)
def test_the_kserve_schema_catches_mistakes(mistake: str) -> None:
    kind, mutate = KSERVE_MISTAKES[mistake]
    broken = copy.deepcopy(one(kind))
    mutate(broken)
    assert kserve_errors(broken, K8S_VERSIONS[0]) != []


# ---- how the Kubernetes pieces fit together -------------------------------------------------


def test_deployment_selector_matches_its_pod_labels() -> None:
    selector = one("Deployment")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels().items()


def test_service_selects_the_pods_and_targets_the_server_ports() -> None:
    service = one("Service")["spec"]
    assert service["selector"].items() <= pod_labels().items()
    http_port = int(env_value(server_container(), "PTSERVE_PORT"))
    grpc_port = int(env_value(server_container(), "PTSERVE_GRPC_PORT"))
    targets = {resolve_port(server_container(), p["targetPort"]) for p in service["ports"]}
    assert targets == {http_port, grpc_port}
    (grpc,) = [
        p
        for p in service["ports"]
        if resolve_port(server_container(), p["targetPort"]) == grpc_port
    ]
    assert grpc["appProtocol"] == "kubernetes.io/h2c"  # gRPC in clear text, for proxies


def test_the_grpc_port_is_declared_and_probed() -> None:
    container = server_container()
    grpc_port = int(env_value(container, "PTSERVE_GRPC_PORT"))
    assert resolve_port(container, "grpc") == grpc_port
    # the standard gRPC health Check (service "": the whole server) follows readiness
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port}


def test_hpa_scales_the_deployment() -> None:
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one("Deployment")["metadata"]["name"],
    }
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    # Utilization targets are relative to the request: without one the HPA cannot act.
    resources = {m["resource"]["name"] for m in hpa["metrics"] if m["type"] == "Resource"}
    for resource in resources:
        assert resource in server_container()["resources"]["requests"]


def test_pdb_covers_the_pods_and_leaves_a_replica() -> None:
    pdb = one("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"] == one("Deployment")["spec"]["selector"]["matchLabels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels().items()
    min_replicas = one("HorizontalPodAutoscaler")["spec"]["minReplicas"]
    if "maxUnavailable" in pdb:
        assert 1 <= pdb["maxUnavailable"] < min_replicas
    else:
        assert pdb["minAvailable"] < min_replicas  # else no node could ever be drained


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted({source for source, _ in KUBERNETES})


@pytest.mark.parametrize("server", SERVERS)
def test_probes_hit_the_health_endpoints_on_the_server_port(server: str) -> None:
    container = SERVERS[server]()
    port = int(env_value(container, "PTSERVE_PORT"))
    assert env_value(container, "PTSERVE_HOST") == "0.0.0.0"  # else probes can't reach it
    assert resolve_port(container, port) == port
    expected = {
        "livenessProbe": {"/health/live"},
        "readinessProbe": {"/health/ready"},  # 503 while loading and draining
        "startupProbe": {"/health/live", "/health/ready"},
    }
    for probe, paths in expected.items():
        if "grpc" in container[probe]:  # the gRPC health Check: see the test above
            assert probe == "readinessProbe", f"{probe} must not follow readiness"
            continue
        action = container[probe]["httpGet"]
        assert action["path"] in paths, f"{probe} probes {action['path']}"
        assert resolve_port(container, action["port"]) == port, probe
    # The model loads before the server listens: the startup probe must allow a slow load.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize(
    "container",
    [
        *(f"deployment:{c['name']}" for c in pod_spec()["containers"]),
        *(f"deployment:{c['name']}" for c in pod_spec()["initContainers"]),
        "servingruntime:kserve-container",
    ],
)
def test_every_container_has_cpu_and_memory_requests_and_limits(container: str) -> None:
    kind, name = container.split(":")
    if kind == "deployment":
        spec = named(pod_spec()["containers"] + pod_spec()["initContainers"], name)
    else:
        spec = runtime_container()
    requests, limits = spec["resources"]["requests"], spec["resources"]["limits"]
    for resource in ("cpu", "memory"):
        assert quantity(requests[resource]) <= quantity(limits[resource]), resource


@pytest.mark.parametrize("server", SERVERS)
def test_torch_threads_follow_the_cpu_limit(server: str) -> None:
    container = SERVERS[server]()
    assert env_value(container, "PTSERVE_WORKERS") == "1"  # scale with replicas instead
    source = env(container)["PTSERVE_TORCH_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert source == {
        "containerName": container["name"],
        "resource": "limits.cpu",
        "divisor": "1",
    }
    # The downward API rounds up: a fractional limit would get more threads than CPUs.
    cpus = quantity(container["resources"]["limits"]["cpu"])
    assert cpus == cpus.to_integral_value()
    assert cpus >= 1


def test_pods_run_as_non_root_without_privileges() -> None:
    pod_security = pod_spec()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == dockerfile_uid() != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec()["automountServiceAccountToken"] is False
    for container in pod_spec()["containers"] + pod_spec()["initContainers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["capabilities"]["drop"] == ["ALL"], container["name"]
    runtime_security = runtime_container()["securityContext"]
    assert runtime_security["runAsNonRoot"] is True
    assert runtime_security["runAsUser"] == dockerfile_uid()
    assert runtime_security["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("server", SERVERS)
def test_grace_period_covers_the_drain_delay_and_timeout(server: str) -> None:
    """SIGKILL comes terminationGracePeriodSeconds after SIGTERM: ptserve must be done by then,
    after serving through its drain delay and finishing its requests within the timeout."""
    container = SERVERS[server]()
    delay = float(env_value(container, "PTSERVE_DRAIN_DELAY_S"))
    drain = float(env_value(container, "PTSERVE_DRAIN_TIMEOUT_S"))
    assert delay > 0  # endpoints and load balancers need time to drop the pod
    assert "lifecycle" not in container  # ptserve's own delay replaces a preStop sleep
    # A ServingRuntime sets no grace period: in raw deployment mode the pod gets Kubernetes'
    # default of 30 s; under Knative the queue-proxy drains first.
    grace = 30 if server == "servingruntime" else pod_spec()["terminationGracePeriodSeconds"]
    assert grace >= delay + drain + 5


@pytest.mark.parametrize("server", SERVERS)
def test_ptserve_variables_are_real_settings_with_valid_values(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = SERVERS[server]()
    for name in [name for name in os.environ if name.startswith("PTSERVE_")]:
        monkeypatch.delenv(name)
    cpus = int(quantity(container["resources"]["limits"]["cpu"]))
    for name, entry in env(container).items():
        if not name.startswith("PTSERVE_"):
            continue
        # ptserve ignores an unknown PTSERVE_* variable: a misspelt one would pass silently.
        assert name.removeprefix("PTSERVE_").lower() in Settings.model_fields, name
        if "value" in entry:
            value = entry["value"]
        else:  # the downward API gives the CPU limit in whole cores
            assert entry["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu", name
            value = str(cpus)
        monkeypatch.setenv(name, value.replace("{{.Name}}", "digits"))  # KServe's template
    settings = Settings()  # validates every value, as the server will at start-up
    assert settings.host == "0.0.0.0"
    assert settings.port == container["ports"][0]["containerPort"]
    assert settings.workers == 1
    assert not settings.protect_health  # the kubelet's probes carry no API key
    assert settings.torch_threads == cpus
    assert settings.drain_timeout_s == float(env_value(container, "PTSERVE_DRAIN_TIMEOUT_S"))
    assert settings.drain_delay_s == float(env_value(container, "PTSERVE_DRAIN_DELAY_S"))


def test_the_model_volume_holds_the_model_the_server_serves(tmp_path: Path) -> None:
    server = server_container()
    model_path = Path(env_value(server, "PTSERVE_MODEL_PATH"))
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    model_dir = str(model_path.parent)
    assert model_dir in mounts, f"{model_path} is not on a mounted volume"
    assert named(server["volumeMounts"], mounts[model_dir]).get("readOnly") is True
    assert mounts[model_dir] in {v["name"] for v in pod_spec()["volumes"]}
    fetch = named(pod_spec()["initContainers"], "fetch-model")
    assert {"name": mounts[model_dir], "mountPath": model_dir} in fetch["volumeMounts"]
    # Run the initContainer's command against a temporary directory standing in for the volume.
    program, flag, code = fetch["command"]
    assert (program, flag) == ("python", "-c")
    assert f'"{model_dir}"' in code
    subprocess.run(
        [sys.executable, "-c", code.replace(f'"{model_dir}"', repr(str(tmp_path)))],
        check=True,
        timeout=hang_guard(COMMAND_S),
    )
    assert (tmp_path / model_path.name).is_file()
    assert (tmp_path / "labels.txt").is_file()


def test_no_image_is_floating() -> None:
    runtime_images = [c["image"] for c in one("ServingRuntime")["spec"]["containers"]]
    for image in [c["image"] for c in pod_spec()["containers"] + pod_spec()["initContainers"]]:
        assert ":" in image, image
        assert not image.endswith(":latest"), image
        assert image in runtime_images  # one image, one tag to bump


# ---- KServe: runtime and InferenceService agree ---------------------------------------------


def test_the_runtime_serves_pytorch_over_the_v2_protocol() -> None:
    spec = one("ServingRuntime")["spec"]
    assert "v2" in spec["protocolVersions"]
    assert "grpc-v2" in spec["protocolVersions"]
    assert env_value(runtime_container(), "PTSERVE_GRPC_PORT") == "8081"  # KServe's gRPC port
    assert "pytorch" in {f["name"] for f in spec["supportedModelFormats"]}
    container = runtime_container()
    assert Path(env_value(container, "PTSERVE_MODEL_PATH")).parent == Path(KSERVE_MODEL_DIR)
    assert env_value(container, "PTSERVE_NAME") == "{{.Name}}"  # URLs carry the isvc's name


def test_the_inference_service_uses_the_runtime() -> None:
    runtime = one("ServingRuntime")
    predictor = one("InferenceService")["spec"]["predictor"]
    implementations = [name for name in PREDICTOR_IMPLEMENTATIONS if name in predictor]
    assert implementations == ["model"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["protocolVersion"] == "v2"
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.match(r"^[a-z0-9]+://", model["storageUri"])
    assert predictor.get("minReplicas", 1) <= predictor.get("maxReplicas", math.inf)


def test_the_documented_grpc_inference_service_fits_the_runtime() -> None:
    text = DEPLOY_DOC.read_text()
    snippet = text.split("Over gRPC (", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    manifest = yaml.safe_load(snippet)
    for version in K8S_VERSIONS:
        assert kserve_errors(manifest, version) == []
    model = manifest["spec"]["predictor"]["model"]
    assert model["protocolVersion"] in one("ServingRuntime")["spec"]["protocolVersions"]
    (port,) = model["ports"]
    assert port["name"] == "h2c"  # the port Knative routes as clear-text HTTP/2
    assert str(port["containerPort"]) == env_value(runtime_container(), "PTSERVE_GRPC_PORT")


# ---- Dockerfile -----------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuations joined and comments
    dropped; ARGs declared before the first FROM are substituted into the FROM lines."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions:
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            for name, value in global_args.items():
                rest = rest.replace(f"${{{name}}}", value).replace(f"${name}", value)
            stages.append([(keyword, rest)])
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].append((keyword, rest))
    return stages


def final_stage(keyword: str) -> list[str]:
    return [rest for k, rest in dockerfile_stages()[-1] if k == keyword]


def dockerfile_uid() -> int:
    user = final_stage("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: use a numeric UID so runAsNonRoot can be verified"
    return int(uid)


def dockerfile_env() -> dict[str, str]:
    found: dict[str, str] = {}
    for rest in final_stage("ENV"):
        for pair in shlex.split(rest):
            name, _, value = pair.partition("=")
            found[name] = value
    return found


def test_every_stage_builds_on_python_311_slim() -> None:
    for stage in dockerfile_stages():
        image = stage[0][1].split()[0]
        assert image == "python:3.11-slim", image


def test_the_image_runs_as_a_non_root_user() -> None:
    assert dockerfile_uid() != 0
    assert len(dockerfile_stages()) >= 2, "build in one stage, copy the venv into a clean one"


def test_torch_comes_from_the_cpu_index_at_the_pinned_version() -> None:
    runs = [rest for stage in dockerfile_stages() for k, rest in stage if k == "RUN"]
    installs = [cmd for run in runs for cmd in run.split("&&") if "pip install" in cmd]
    torch_install = [cmd for cmd in installs if f"--index-url {CPU_INDEX}" in cmd]
    assert len(torch_install) == 1, "torch must be installed from the PyTorch CPU index"
    assert "torch" in torch_install[0]
    requirements = [cmd for cmd in installs if "-r requirements.txt" in cmd]
    assert installs.index(torch_install[0]) < installs.index(requirements[0]), (
        "install torch (CPU) before requirements.txt, or pip takes the CUDA build from PyPI"
    )
    # The version comes from requirements.txt through `grep -E '^torch=='`: it must find it.
    pins = re.findall(r"^torch==\S+$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert len(pins) == 1
    assert "grep -E '^torch==' requirements.txt" in " ".join(runs)
    assert not any("--extra-index-url" in cmd for cmd in installs)


def test_the_runtime_stage_installs_nothing() -> None:
    for rest in final_stage("RUN"):
        assert not re.search(r"apt-get|apk |pip install|gcc|build-essential", rest), rest
    copies = final_stage("COPY")
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_the_image_environment_and_port() -> None:
    environment = dockerfile_env()
    assert environment["PYTHONDONTWRITEBYTECODE"] == "1"
    assert environment["PYTHONUNBUFFERED"] == "1"
    assert environment["PTSERVE_HOST"] == "0.0.0.0"
    assert final_stage("EXPOSE") == [environment["PTSERVE_PORT"]]
    # No model path given: `ptserve serve` serves the bundled example.
    entrypoint = json.loads(final_stage("ENTRYPOINT")[-1])
    command = json.loads(final_stage("CMD")[-1])
    assert entrypoint + command == ["ptserve", "serve"]
    assert "PTSERVE_MODEL_PATH" not in environment


def healthcheck() -> tuple[dict[str, str], list[str]]:
    (rest,) = final_stage("HEALTHCHECK")
    options, _, command = rest.partition(" CMD ")
    flags = dict(flag.removeprefix("--").split("=") for flag in options.split())
    argv: list[str] = json.loads(command)
    return flags, argv


def test_healthcheck_asks_readiness_with_python() -> None:
    flags, argv = healthcheck()
    assert argv[:2] == ["python", "-c"]
    assert "/health/ready" in argv[2]
    assert "start-period" in flags  # the model loads before the server answers


@pytest.fixture
def stub_server() -> Iterator[tuple[int, dict[str, int]]]:
    """A loopback HTTP server answering /health/ready with the status in ``state``."""
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = state["status"] if self.path == "/health/ready" else 404
            self.send_response(code)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_fails_unless_ready(stub_server: tuple[int, dict[str, int]]) -> None:
    port, state = stub_server
    _, argv = healthcheck()

    def run_check(at_port: int) -> int:
        environment = {"PTSERVE_PORT": str(at_port), "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [sys.executable, *argv[1:]],
            env=environment,
            capture_output=True,
            timeout=hang_guard(COMMAND_S),
        )
        return done.returncode

    assert run_check(port) == 0
    state["status"] = 503
    assert run_check(port) != 0
    closed = socket_port_without_listener()
    assert run_check(closed) != 0


def socket_port_without_listener() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def dockerignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out (last matching pattern wins; a pattern
    that matches a directory leaves out everything below it)."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").removeprefix("/")
        globs = {glob, glob.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_what_the_build_copies() -> None:
    sources = [
        source
        for stage in dockerfile_stages()
        for keyword, rest in stage
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source), f".dockerignore leaves out {source}"
    for packaged in ["ptserve/app.py", "ptserve/example/digits.pt", "ptserve/py.typed"]:
        assert not dockerignored(packaged), packaged
    for kept_out in [".git", "tests/unit", "bench/results", "ptserve/__pycache__", "model.pt"]:
        assert dockerignored(kept_out), kept_out


# ---- the docs say what was and was not run --------------------------------------------------


def test_the_deploy_doc_names_every_file_and_what_was_verified() -> None:
    text = DEPLOY_DOC.read_text()
    for path in [*KUBERNETES_DIR.iterdir(), *KSERVE_DIR.iterdir(), DOCKERFILE, DOCKERIGNORE]:
        assert str(path.relative_to(ROOT)) in text, path.name
    assert "No Docker engine or Kubernetes cluster was available" in text
    assert "kubernetes-validate" in text
    for version in K8S_VERSIONS:
        assert version.rsplit(".", 1)[0] in text
