"""Static checks of the cluster configs (cluster/**) and of the commands in docs/cluster.md.

Nothing here starts Ray or talks to a cloud: the launcher YAMLs are validated with the JSON
schema and the validator shipped in the Ray wheel, the KubeRay manifests are parsed and inspected,
and every `jobs/pretrain.py` command line (docs and RayJob) is applied to the real config schema
and checked to fit in the cluster it targets. Runs in a couple of seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = ROOT / "cluster"
KUBERAY_DIR = CLUSTER_DIR / "kuberay"
RUNTIME_ENV = KUBERAY_DIR / "runtime-env.yaml"
DOCS = ROOT / "docs" / "cluster.md"
RAY_VERSION = "2.60.0"
RAY_EXTRAS = {"default", "train", "tune", "data"}
TOKEN_FILE = "~/.ray/auth_token"

LAUNCHER_CONFIGS = sorted(CLUSTER_DIR.glob("*.yaml"))
KUBERAY_MANIFESTS = sorted(p for p in KUBERAY_DIR.glob("*.yaml") if p != RUNTIME_ENV)


def _canon(name: str) -> str:
    return str(canonicalize_name(name))


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# --------------------------------------------------------------------------------------------
# Loading


@functools.cache
def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@functools.cache
def _load_all(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(path.read_text()))


def _ray_schema_path() -> Path:
    return Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def _prepared(path: Path) -> dict[str, Any]:
    """The config as `ray up` sees it: merged with the provider's defaults.yaml from the wheel."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(_load(path)))


def _pyproject_dependencies() -> dict[str, Requirement]:
    """What a node installs: pyproject's dependencies, those of cluster/pins.txt pinned."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = {_canon(r.name): r for r in map(Requirement, project["dependencies"])}
    for line in (ROOT / "cluster" / "pins.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin = Requirement(line)
            # A pin must be a version pyproject allows, and it replaces the range on nodes.
            assert reqs[_canon(pin.name)].specifier.contains(str(pin.specifier).lstrip("=")), pin
            pin.extras = reqs[_canon(pin.name)].extras
            reqs[_canon(pin.name)] = pin
    return reqs


def _requirements_in(commands: list[str]) -> list[Requirement]:
    """Requirement specifiers (`"torch>=2.4,<3"`, `ray[...]==x`) in pip/uv install commands."""
    found = []
    for command in commands:
        if not re.search(r"\bpip3? install\b", command):
            continue
        for token in shlex.split(command):
            if token.startswith(("-", "~", "/", "$", ".")) or token in {"pip", "pip3", "install"}:
                continue
            try:
                found.append(Requirement(token))
            except Exception:  # not a requirement (uv, python paths, shell words)
                continue
    return [r for r in found if r.name not in {"uv", "install"}]


def _all_commands(config: dict[str, Any]) -> list[str]:
    commands = [c for key, value in config.items() if key.endswith("_commands") for c in value]
    for node_type in config.get("available_node_types", {}).values():
        for key, value in node_type.items():
            if key.endswith("_commands"):
                commands.extend(value)
    return commands


# --------------------------------------------------------------------------------------------
# Cluster capacity model shared by the launcher configs and the KubeRay manifests


@dataclasses.dataclass
class NodeKind:
    name: str
    max_count: int
    resources: dict[str, float]


def _launcher_node_kinds(path: Path) -> list[NodeKind]:
    config = _load(path)
    return [
        NodeKind(name, t.get("max_workers", 0), {k: float(v) for k, v in t["resources"].items()})
        for name, t in config["available_node_types"].items()
        if name != config["head_node_type"]
    ]


def _parse_ray_start_resources(value: str | None) -> dict[str, float]:
    """KubeRay's rayStartParams.resources is a JSON object wrapped in escaped double quotes."""
    if not value:
        return {}
    text = value.strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('\\"', '"')
    return {k: float(v) for k, v in json.loads(text).items()}


def _cpu_quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _memory_quantity(value: Any) -> float:
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(text[:-2]) * units[text[-2:]] if text[-2:] in units else float(text)


def _container_limits(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})


def _kuberay_node_kinds(spec: dict[str, Any]) -> list[NodeKind]:
    kinds = []
    for group in spec["workerGroupSpecs"]:
        resources = _parse_ray_start_resources(group.get("rayStartParams", {}).get("resources"))
        limits = _container_limits(group)
        if "cpu" in limits:
            resources["CPU"] = _cpu_quantity(limits["cpu"])
        if "memory" in limits:  # KubeRay sets Ray's `memory` from the container's limit
            resources["memory"] = _memory_quantity(limits["memory"])
        if "nvidia.com/gpu" in limits:
            resources["GPU"] = float(limits["nvidia.com/gpu"])
        kinds.append(NodeKind(group["groupName"], group["maxReplicas"], resources))
    return kinds


def _per_node(demand: dict[str, float], node: NodeKind) -> int:
    """How many bundles of `demand` one node of this kind holds."""
    counts = [
        math.floor(node.resources.get(key, 0.0) / amount + 1e-9)
        for key, amount in demand.items()
        if amount > 0
    ]
    return min(counts) if counts else 0


def _capacity(demand: dict[str, float], kinds: list[NodeKind]) -> int:
    return sum(kind.max_count * _per_node(demand, kind) for kind in kinds)


def _trainer_demand(cfg: Any) -> dict[str, float]:
    demand = {"CPU": float(cfg.ray.cpus_per_worker), **dict(cfg.ray.trainer_resources)}
    if cfg.ray.use_gpu:
        demand["GPU"] = 1.0
    return demand


def _actor_demand(cfg: Any) -> dict[str, float]:
    """What Ray Data asks for each augmentation actor it adds to a running pool: the CPUs and
    custom resources configured, plus `memory` = the average output block in bytes (Ray 2.60's
    ConfigureMapTaskMemoryUsingOutputSize), here one batch of uint8 patches (3 channels at most,
    32 px when the dataset's size is not in the config) within the 128 MiB block target."""
    side = cfg.patches.size or cfg.data.image_size or 32
    block = cfg.ray.aug_batch_size * cfg.patches.num_patches * side * side * 3
    return {
        "CPU": float(cfg.ray.aug_cpus_per_actor),
        **dict(cfg.ray.aug_resources),
        "memory": float(min(block, 128 * 1024**2)),
    }


# --------------------------------------------------------------------------------------------
# jobs/pretrain.py command lines: in the docs and in the RayJob


def _pretrain_overrides(command: str) -> list[str]:
    tokens = shlex.split(command)
    script = next(i for i, t in enumerate(tokens) if t.endswith("jobs/pretrain.py"))
    return tokens[script + 1 :]


def _apply_overrides(overrides: list[str]) -> Any:
    """The typed config Hydra composes from these overrides, exactly as jobs/pretrain.py does:
    unknown keys, bad types and overrides Hydra refuses (new dict keys without ++) raise."""
    from empssl_ray.launch import compose

    return compose("pretrain", overrides)


def _docs_commands() -> list[tuple[str, str]]:
    """(section heading, command) for every jobs/pretrain.py command in docs/cluster.md."""
    commands, section, in_code, lines = [], "", False, DOCS.read_text().splitlines()
    buffer = ""
    for line in lines:
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            if line.startswith("## "):
                section = line[3:].strip()
            continue
        buffer += line.rstrip()
        if buffer.endswith("\\"):
            buffer = buffer[:-1] + " "
            continue
        if "jobs/pretrain.py" in buffer:
            commands.append((section, buffer))
        buffer = ""
    return commands


def _docs_target(section: str) -> list[NodeKind]:
    if section.startswith("AWS"):
        return _launcher_node_kinds(CLUSTER_DIR / "aws.yaml")
    if section.startswith("GCP"):
        return _launcher_node_kinds(CLUSTER_DIR / "gcp.yaml")
    if section.startswith("Kubernetes"):
        (cluster,) = _load_all(KUBERAY_DIR / "raycluster.yaml")
        return _kuberay_node_kinds(cluster["spec"])
    raise AssertionError(f"docs section {section!r} runs jobs/pretrain.py but names no cluster")


def _assert_preflight_passes(cfg: Any) -> None:
    """What the job's driver checks first on a multi-node cluster under `ray job submit`."""
    from empssl_ray.rules import check_locations, validate

    validate(cfg)
    check_locations(cfg, nodes=3, under_job=True)


def _readme_commands() -> list[str]:
    """Every `ray job submit ... jobs/pretrain.py` command in the README's code blocks."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [
        line
        for line in text.splitlines()
        if "ray job submit" in line and "jobs/pretrain.py" in line
    ]


def _assert_job_fits(cfg: Any, kinds: list[NodeKind]) -> None:
    trainer, actor = _trainer_demand(cfg), _actor_demand(cfg)
    assert _capacity(trainer, kinds) >= cfg.ray.num_workers, (
        f"{cfg.ray.num_workers} training workers asking {trainer} do not fit in {kinds}"
    )
    assert 1 <= cfg.ray.aug_min_actors <= cfg.ray.aug_max_actors
    assert _capacity(actor, kinds) >= cfg.ray.aug_max_actors, (
        f"{cfg.ray.aug_max_actors} augmentation actors asking {actor} do not fit in {kinds}"
    )
    # The custom resources are what keep augmentation off the GPU nodes and training off the
    # CPU nodes: neither may fit on the other's node kind.
    for kind in kinds:
        if kind.resources.get("GPU", 0) > 0:
            assert _per_node(actor, kind) == 0, f"augmentation actors would run on {kind.name}"
        else:
            assert _per_node(trainer, kind) == 0, f"training workers would run on {kind.name}"


# --------------------------------------------------------------------------------------------
# Ray cluster launcher configs


def test_expected_files_exist() -> None:
    assert {"aws.yaml", "gcp.yaml"} <= set(_ids(LAUNCHER_CONFIGS))
    assert {"raycluster.yaml", "rayjob.yaml"} <= set(_ids(KUBERAY_MANIFESTS))
    assert RUNTIME_ENV.is_file()
    assert DOCS.is_file()


def test_ray_wheel_is_the_pinned_version() -> None:
    assert ray.__version__ == RAY_VERSION
    assert _ray_schema_path().is_file()
    ray_req = _pyproject_dependencies()["ray"]
    assert str(ray_req.specifier) == f"=={RAY_VERSION}"


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_ids(LAUNCHER_CONFIGS))
def test_launcher_config_matches_ray_schema(path: Path) -> None:
    from ray.autoscaler._private.util import validate_config

    schema = json.loads(_ray_schema_path().read_text())
    jsonschema.validate(_load(path), schema)  # the file as written
    validate_config(_prepared(path))  # and as `ray up` validates it, after merging the defaults


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_ids(LAUNCHER_CONFIGS))
def test_ray_schema_rejects_broken_variants(path: Path) -> None:
    """The schema validation above is live: typos and wrong types of the same file fail it."""
    schema = json.loads(_ray_schema_path().read_text())
    typo = copy.deepcopy(_load(path))
    typo["head_start_commands"] = typo.pop("head_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)
    bad_type = copy.deepcopy(_load(path))
    next(iter(bad_type["available_node_types"].values()))["resources"]["CPU"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad_type, schema)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_ids(LAUNCHER_CONFIGS))
def test_launcher_installs_pinned_ray(path: Path) -> None:
    prepared = _prepared(path)
    for key in ("head_setup_commands", "worker_setup_commands"):
        ray_reqs = [r for r in _requirements_in(prepared[key]) if r.name == "ray"]
        assert ray_reqs, f"{key} installs no ray"
        for req in ray_reqs:
            assert str(req.specifier) == f"=={RAY_VERSION}", f"{key}: {req}"
            assert req.extras >= RAY_EXTRAS, f"{key}: {req} lacks extras {RAY_EXTRAS - req.extras}"
    # No unpinned `pip install -U ray` or wheel URL sneaking in anywhere else.
    for command in _all_commands(prepared):
        assert "ray-wheels" not in command and "ray-3.0.0.dev0" not in command, command


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_ids(LAUNCHER_CONFIGS))
def test_launcher_installs_project_dependencies(path: Path) -> None:
    installed = {
        _canon(r.name): r for r in _requirements_in(_prepared(path)["worker_setup_commands"])
    }
    for name, dep in _pyproject_dependencies().items():
        assert name in installed, f"worker setup does not install {dep}"
        assert installed[name].specifier == dep.specifier, f"{installed[name]} != pyproject {dep}"


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_ids(LAUNCHER_CONFIGS))
def test_launcher_token_auth(path: Path) -> None:
    prepared = _prepared(path)
    head = prepared["head_start_ray_commands"]
    starts = [i for i, c in enumerate(head) if re.search(r"\bray start\b.*--head\b", c)]
    assert len(starts) == 1, head
    start = starts[0]
    assert re.search(r"\bexport RAY_AUTH_MODE=token\b", head[start]), head[start]
    generate = [i for i, c in enumerate(head) if "ray get-auth-token --generate" in c]
    assert generate and generate[0] < start, "the token must exist before `ray start --head`"
    # get-auth-token prints the token on stdout: it must not end up in the `ray up` log.
    assert re.search(r"ray get-auth-token --generate\s*>\s*/dev/null", head[generate[0]])

    workers = prepared["worker_start_ray_commands"]
    worker_starts = [c for c in workers if re.search(r"\bray start\b", c)]
    assert worker_starts, workers
    for command in worker_starts:
        assert "--head" not in command
        assert re.search(r"\bexport RAY_AUTH_MODE=token\b", command), command
    # Workers read the token from the default path; the head's launcher syncs it there.
    assert TOKEN_FILE in prepared["cluster_synced_files"]

    for command in _all_commands(prepared):
        assert "RAY_AUTH_MODE=disabled" not in command, command
        assert "RAY_AUTH_TOKEN=" not in command, f"inline token in {command!r}"


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_ids(LAUNCHER_CONFIGS))
def test_launcher_dashboard_is_local_only(path: Path) -> None:
    prepared = _prepared(path)
    (head_start,) = [c for c in prepared["head_start_ray_commands"] if "--head" in c]
    assert re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)(\s|$)", head_start), head_start
    for command in _all_commands(prepared):
        assert "0.0.0.0" not in command, f"something binds every interface: {command!r}"
    # No security group rule (AWS) opening the dashboard port to the world.
    for rule in prepared["provider"].get("security_group", {}).get("IpPermissions", []):
        opens_dashboard = rule.get("FromPort", 0) <= 8265 <= rule.get("ToPort", 65535)
        world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", []))
        assert not (opens_dashboard and world), rule


def _is_gpu_node(provider: str, node_config: dict[str, Any]) -> bool:
    if provider == "aws":
        return re.match(r"(g|p)\d", node_config["InstanceType"]) is not None
    if provider == "gcp":
        return bool(node_config.get("guestAccelerators")) or node_config["machineType"].startswith(
            ("a2-", "a3-", "a4-", "g2-")
        )
    raise AssertionError(f"unknown provider {provider}")


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_ids(LAUNCHER_CONFIGS))
def test_launcher_node_types_and_custom_resources(path: Path) -> None:
    config = _load(path)
    provider = config["provider"]["type"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU", 1) <= 2, "the head should run (almost) no tasks"
    assert not {"GPU", "trainer", "augment"} & set(head["resources"])

    trainers = {n: t for n, t in types.items() if t["resources"].get("trainer", 0) > 0}
    augmenters = {n: t for n, t in types.items() if t["resources"].get("augment", 0) > 0}
    assert trainers and augmenters
    assert not set(trainers) & set(augmenters)
    for name, t in trainers.items():
        assert t["resources"].get("GPU", 0) >= 1, name
        assert _is_gpu_node(provider, t["node_config"]), f"{name} is not a GPU machine"
    for name, t in augmenters.items():
        res = t["resources"]
        assert res.get("GPU", 0) == 0 and not _is_gpu_node(provider, t["node_config"]), name
        assert res["augment"] >= 4, f"{name}: room for several actors per node"
        # Actors ask 1 CPU each by default: CPUs beyond the augment slots run read/decode tasks.
        assert res["augment"] <= res["CPU"] - 2, f"{name}: no CPUs left for read/decode tasks"

    workers = [t for n, t in types.items() if n != config["head_node_type"]]
    for t in workers:
        assert t.get("min_workers", 0) == 0, "workers scale from zero"
        assert t["max_workers"] >= 1
    assert sum(t["max_workers"] for t in workers) <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_ids(LAUNCHER_CONFIGS))
def test_launcher_names_a_modern_image(path: Path) -> None:
    """Ray's fallback image (latest_dlami, Ubuntu 18.04) cannot run Ray 2.60: name one per node."""
    config = _load(path)
    for name, t in config["available_node_types"].items():
        node_config = t["node_config"]
        if config["provider"]["type"] == "aws":
            assert node_config.get("ImageId") not in (None, "", "latest_dlami"), name
        else:
            (boot,) = [d for d in node_config["disks"] if d.get("boot")]
            assert boot["initializeParams"]["sourceImage"], name


# --------------------------------------------------------------------------------------------
# KubeRay manifests


def _kuberay_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in KUBERAY_MANIFESTS for doc in _load_all(path) if doc is not None]


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for path, doc in _kuberay_docs():
        if doc["kind"] == "RayCluster":
            specs.append((f"{path.name}:RayCluster", doc["spec"]))
        elif doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
            specs.append((f"{path.name}:RayJob", doc["spec"]["rayClusterSpec"]))
    return specs


def _or_empty(collect: Any) -> list[Any]:
    """Parametrization data; a broken file then fails the tests that read it, not collection."""
    try:
        return collect()
    except Exception:
        return []


CLUSTER_SPECS = _or_empty(_cluster_specs)


def _walk(node: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in a nested YAML document."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found.extend(_walk(v, key))
    elif isinstance(node, list):
        for item in node:
            found.extend(_walk(item, key))
    return found


def _ray_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [g["template"]["spec"]["containers"][0] for g in groups]


def test_kuberay_manifests_parse_as_ray_v1() -> None:
    kinds = set()
    for path in KUBERAY_MANIFESTS:
        docs = [d for d in _load_all(path) if d is not None]
        assert docs, f"{path.name} is empty"
        for doc in docs:
            assert doc["apiVersion"] == "ray.io/v1", path.name
            assert doc["kind"] in {"RayCluster", "RayJob"}, f"{path.name}: {doc['kind']}"
            kinds.add(doc["kind"])
    assert kinds == {"RayCluster", "RayJob"}
    assert {name.split(":")[1] for name, _ in CLUSTER_SPECS} == {"RayCluster", "RayJob"}


def test_kuberay_images_are_ray_2_60_0() -> None:
    images = [image for _, doc in _kuberay_docs() for image in _walk(doc, "image")]
    assert images
    for image in images:
        assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_VERSION)}(-[\w.-]+)?", image), image
    for name, spec in CLUSTER_SPECS:
        assert spec["rayVersion"] == RAY_VERSION, name


@pytest.mark.parametrize("name,spec", CLUSTER_SPECS, ids=[n for n, _ in CLUSTER_SPECS])
def test_kuberay_autoscaling(name: str, spec: dict[str, Any]) -> None:
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0, group["groupName"]
        assert group["maxReplicas"] >= 1, group["groupName"]
        assert group.get("replicas", 0) <= group["maxReplicas"]


@pytest.mark.parametrize("name,spec", CLUSTER_SPECS, ids=[n for n, _ in CLUSTER_SPECS])
def test_kuberay_token_auth(name: str, spec: dict[str, Any]) -> None:
    auth = spec["authOptions"]
    assert auth["mode"] == "token"
    secret = auth["secretName"]
    assert secret
    for container in _ray_containers(spec):
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["RAY_AUTH_MODE"].get("value") == "token", container["name"]
        token = env["RAY_AUTH_TOKEN"]
        assert "value" not in token, "the token must come from the Secret, not the manifest"
        assert token["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}
    for env in _walk(spec, "env"):
        for var in env:
            assert not (var["name"] == "RAY_AUTH_MODE" and var.get("value") != "token"), var


def test_kuberay_commits_no_secret_or_public_endpoint() -> None:
    for path, doc in _kuberay_docs():
        assert doc["kind"] not in {"Secret", "Service", "Ingress"}, path.name
    for name, spec in CLUSTER_SPECS:
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", name
        assert head.get("enableIngress") is not True, name
        assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
        for service_type in _walk(spec, "serviceType"):
            assert service_type not in {"LoadBalancer", "NodePort"}, name


@pytest.mark.parametrize("name,spec", CLUSTER_SPECS, ids=[n for n, _ in CLUSTER_SPECS])
def test_kuberay_groups_and_custom_resources(name: str, spec: dict[str, Any]) -> None:
    head_params = spec["headGroupSpec"]["rayStartParams"]
    assert head_params.get("num-cpus") == "0", "the head should run no tasks"
    for params in [head_params, *(g["rayStartParams"] for g in spec["workerGroupSpecs"])]:
        for key, value in params.items():
            assert isinstance(value, str), f"rayStartParams.{key} must be a string"

    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"gpu-trainers", "cpu-augment"} <= set(groups)

    gpu = groups["gpu-trainers"]
    gpu_res = _parse_ray_start_resources(gpu["rayStartParams"].get("resources"))
    assert gpu_res.get("trainer", 0) >= 1 and "augment" not in gpu_res
    assert int(_container_limits(gpu).get("nvidia.com/gpu", 0)) >= 1
    assert "gpu" in gpu["template"]["spec"]["containers"][0]["image"].split(":")[1]

    cpu = groups["cpu-augment"]
    cpu_res = _parse_ray_start_resources(cpu["rayStartParams"].get("resources"))
    assert cpu_res.get("augment", 0) >= 4 and "trainer" not in cpu_res
    resources = cpu["template"]["spec"]["containers"][0].get("resources", {})
    assert not any("nvidia.com/gpu" in v for v in resources.values())
    # Actors ask 1 CPU each by default: CPUs beyond the augment slots run read/decode tasks.
    assert cpu_res["augment"] <= _cpu_quantity(_container_limits(cpu)["cpu"]) - 2


def _rayjob() -> dict[str, Any]:
    (job,) = [doc for _, doc in _kuberay_docs() if doc["kind"] == "RayJob"]
    return job


def test_rayjob_runs_pretraining_and_cleans_up() -> None:
    spec = _rayjob()["spec"]
    assert re.match(r"python3? jobs/pretrain\.py\b", spec["entrypoint"]), spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert re.match(r"(https|s3|gs)://.+\.zip$", runtime_env["working_dir"])
    assert runtime_env["pip"] == _load(RUNTIME_ENV)["pip"], "keep runtime-env.yaml in sync"


def test_kuberay_runtime_env_installs_dependencies_but_not_ray() -> None:
    pip = {_canon(Requirement(r).name): Requirement(r) for r in _load(RUNTIME_ENV)["pip"]}
    assert "ray" not in pip, "the image's Ray 2.60.0 must be the one that runs"
    for name, dep in _pyproject_dependencies().items():
        if name == "ray":
            continue
        assert name in pip and pip[name].specifier == dep.specifier, dep


def test_rayjob_cluster_is_the_raycluster() -> None:
    (cluster,) = [doc for _, doc in _kuberay_docs() if doc["kind"] == "RayCluster"]
    assert _rayjob()["spec"]["rayClusterSpec"] == cluster["spec"]


def test_rayjob_entrypoint_is_valid_and_fits() -> None:
    spec = _rayjob()["spec"]
    cfg = _apply_overrides(_pretrain_overrides(spec["entrypoint"]))
    assert cfg.ray.use_gpu is True
    assert set(cfg.ray.trainer_resources) == {"trainer"}
    assert set(cfg.ray.aug_resources) == {"augment"}
    _assert_preflight_passes(cfg)
    _assert_job_fits(cfg, _kuberay_node_kinds(spec["rayClusterSpec"]))


# --------------------------------------------------------------------------------------------
# docs/cluster.md


def test_docs_cover_the_whole_route() -> None:
    text = DOCS.read_text()
    for needle in [
        f'pip install "ray[default]=={RAY_VERSION}"',
        "ray up -y cluster/aws.yaml",
        "ray dashboard cluster/aws.yaml",
        "ray get-auth-token",
        "RAY_AUTH_MODE=token",
        "RAY_ADDRESS=http://127.0.0.1:8265 ray job submit",
        "ray job logs --follow",
        "ray down -y cluster/aws.yaml",
        "ray up -y cluster/gcp.yaml",
        "kubectl apply -f cluster/kuberay/raycluster.yaml",
        "kubectl apply -f cluster/kuberay/rayjob.yaml",
        "kubectl port-forward svc/empssl-ray-head-svc 8265:8265",
    ]:
        assert needle in text, needle
    for path in set(re.findall(r"\bcluster/[\w./-]+\.yaml\b", text)):
        assert (ROOT / path).is_file(), f"docs name a missing file: {path}"
    assert "0.0.0.0" not in text and "LoadBalancer" not in text.replace("no LoadBalancer", "")


def test_docs_service_name_matches_the_raycluster() -> None:
    (cluster,) = [doc for _, doc in _kuberay_docs() if doc["kind"] == "RayCluster"]
    assert f"svc/{cluster['metadata']['name']}-head-svc" in DOCS.read_text()
    secret = cluster["spec"]["authOptions"]["secretName"]
    assert f"kubectl create secret generic {secret}" in DOCS.read_text()


DOCS_COMMANDS = _or_empty(_docs_commands)


def test_docs_have_pretrain_commands_for_every_cluster() -> None:
    sections = {section.split()[0] for section, _ in DOCS_COMMANDS}
    assert {"AWS", "GCP", "Kubernetes"} <= sections, sections


@pytest.mark.parametrize(
    "section,command",
    DOCS_COMMANDS,
    ids=[f"{s.split()[0]}-{i}" for i, (s, _) in enumerate(DOCS_COMMANDS)],
)
def test_docs_pretrain_command_is_valid_and_fits(section: str, command: str) -> None:
    cfg = _apply_overrides(_pretrain_overrides(command))
    assert cfg.ray.use_gpu is True
    assert set(cfg.ray.trainer_resources) == {"trainer"}
    assert set(cfg.ray.aug_resources) == {"augment"}
    assert "://" in cfg.run.storage_path, "a multi-node run needs shared storage"
    _assert_preflight_passes(cfg)
    _assert_job_fits(cfg, _docs_target(section))


def test_readme_cluster_commands_pass_the_preflight() -> None:
    commands = _readme_commands()
    assert commands, "the README shows no ray job submit ... jobs/pretrain.py command"
    for command in commands:
        _assert_preflight_passes(_apply_overrides(_pretrain_overrides(command)))


def test_preflight_refuses_what_a_cluster_cannot_run() -> None:
    """The check the documented commands pass is live: local data or storage, a relative path
    under `ray job submit`, and an empty actor pool are refused in one line."""
    from empssl_ray.config import ConfigError

    base = ["data=parquet", "data.root=s3://b/data", "run.storage_path=s3://b/runs"]
    _assert_preflight_passes(_apply_overrides(base))
    for overrides, message in [
        (["run.storage_path=/mnt/runs"], "run.storage_path=/mnt/runs is on this machine's disk"),
        (["data.root=/data/cifar"], "data.root=/data/cifar is on this machine's disk"),
        (["data=cifar10", "data.root=null"], "jobs/prepare.py data=cifar10"),
        (["run.storage_path=runs"], "run.storage_path=runs is relative"),
        (["ray.aug_min_actors=0"], "ray.aug_min_actors=0 cannot work"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            _assert_preflight_passes(_apply_overrides([*base, *overrides]))
    shared = _apply_overrides(["run.storage_path=/mnt/runs", "run.shared_filesystem=true"])
    _assert_preflight_passes(shared)  # the flag says every node mounts it


def test_fit_check_rejects_oversized_jobs() -> None:
    """The capacity check is live: more workers or actors than the cluster holds fail it."""
    kinds = _launcher_node_kinds(CLUSTER_DIR / "aws.yaml")
    base = [
        "ray.use_gpu=true",
        "++ray.trainer_resources={trainer: 1}",
        "++ray.aug_resources={augment: 1}",
    ]
    _assert_job_fits(_apply_overrides([*base, "ray.num_workers=1", "ray.aug_max_actors=1"]), kinds)
    with pytest.raises(AssertionError, match="training workers"):
        _assert_job_fits(_apply_overrides([*base, "ray.num_workers=99"]), kinds)
    with pytest.raises(AssertionError, match="augmentation actors"):
        _assert_job_fits(_apply_overrides([*base, "ray.aug_max_actors=9999"]), kinds)
    with pytest.raises(AssertionError, match="augmentation actors would run"):
        _assert_job_fits(
            _apply_overrides(["ray.use_gpu=true", "++ray.trainer_resources={trainer: 1}"]), kinds
        )
    with pytest.raises(Exception, match="aug_max_actor"):
        _apply_overrides(["ray.aug_max_actor=3"])
