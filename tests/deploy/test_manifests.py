"""Offline checks of the Kubernetes manifests in deploy/k8s.

No cluster, no kubectl: every YAML document is parsed with yaml.safe_load_all and
checked for what the API server / TF Serving would reject or silently get wrong
(selector vs labels, unpinned images, ports that do not line up, an HPA aimed at
nothing, a models.config that does not parse or names a model we do not export,
the stock image asked to load the ScaNN model).
"""

from __future__ import annotations

import pathlib
import re

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import names

REPO = pathlib.Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SERVING_MODELS_CONFIG = REPO / "serving" / "models.config"

STOCK_IMAGE_REPO = "tensorflow/serving"
STOCK_DEPLOYMENT = "tf-serving"
SCANN_DEPLOYMENT = "tf-serving-scann"
GRPC_PORT, REST_PORT = 8500, 8501
WORKLOAD_KINDS = {"Deployment", "Pod"}


# --------------------------------------------------------------------------- loading


def _load_all() -> list[tuple[pathlib.Path, dict]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml")):
        with path.open() as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    docs.append((path, doc))
    return docs


DOCS = _load_all()
OBJECTS = [(p, d) for p, d in DOCS if d.get("kind") != "Kustomization"]
KUSTOMIZATIONS = [(p, d) for p, d in DOCS if d.get("kind") == "Kustomization"]


def _ids(items):
    return [f"{p.relative_to(K8S)}:{d.get('kind')}/{d.get('metadata', {}).get('name')}" for p, d in items]


def _by_kind(kind: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for _, d in OBJECTS:
        if d["kind"] == kind:
            name = d["metadata"]["name"]
            assert name not in out, f"duplicate {kind}/{name}"
            out[name] = d
    return out


def _pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def _containers(obj: dict) -> list[dict]:
    spec = _pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def _serving_container(dep: dict) -> dict:
    (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "tf-serving"]
    return c


def _flags(container: dict) -> dict[str, str]:
    out = {}
    for arg in container.get("command", [])[1:] + container.get("args", []):
        m = re.fullmatch(r"--([a-z_]+)=(.*)", arg)
        assert m, f"unexpected argument {arg!r} (use --flag=value)"
        out[m.group(1)] = m.group(2)
    return out


def _resolve_mounted_file(dep: dict, container: dict, file_path: str) -> tuple[str, str]:
    """(ConfigMap name, key) behind a file path inside the container."""
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    for m in container.get("volumeMounts", []):
        prefix = m["mountPath"].rstrip("/") + "/"
        if not file_path.startswith(prefix):
            continue
        rel = file_path[len(prefix) :]
        vol = volumes[m["name"]]
        sources = []
        if "configMap" in vol:
            sources = [{"configMap": vol["configMap"]}]
        elif "projected" in vol:
            sources = vol["projected"]["sources"]
        for src in sources:
            cm = src.get("configMap")
            if cm is None:
                continue
            items = cm.get("items")
            if items is None:  # whole ConfigMap: file name = key
                cm_obj = _by_kind("ConfigMap")[cm["name"]]
                if rel in cm_obj["data"]:
                    return cm["name"], rel
            else:
                for it in items:
                    if it["path"] == rel:
                        return cm["name"], it["key"]
    raise AssertionError(f"{file_path} is not provided by any ConfigMap volume of {dep['metadata']['name']}")


def _parse_models_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    cfg = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, cfg)
    return cfg


def _model_names(cfg) -> list[str]:
    return [c.name for c in cfg.model_config_list.config]


def _models_config_of(dep_name: str):
    dep = _by_kind("Deployment")[dep_name]
    c = _serving_container(dep)
    cm_name, key = _resolve_mounted_file(dep, c, _flags(c)["model_config_file"])
    return _parse_models_config(_by_kind("ConfigMap")[cm_name]["data"][key])


def _image_repo_tag(image: str) -> tuple[str, str | None, str | None]:
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
    else:
        repo, tag = image, None
    return repo, tag, digest


# --------------------------------------------------------------------------- generic


def test_manifests_exist():
    kinds = {d["kind"] for _, d in OBJECTS}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"} <= kinds
    assert STOCK_DEPLOYMENT in _by_kind("Deployment")
    assert SCANN_DEPLOYMENT in _by_kind("Deployment")


@pytest.mark.parametrize("path,doc", OBJECTS, ids=_ids(OBJECTS))
def test_required_top_level_fields(path, doc):
    assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"]
    assert isinstance(doc.get("kind"), str) and doc["kind"]
    name = doc.get("metadata", {}).get("name")
    assert isinstance(name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    if doc["kind"] != "Namespace":
        assert doc["metadata"].get("namespace") == "recsys"
    expected_api = {
        "Deployment": "apps/v1",
        "Service": "v1",
        "ConfigMap": "v1",
        "Namespace": "v1",
        "PersistentVolumeClaim": "v1",
        "Pod": "v1",
        "HorizontalPodAutoscaler": "autoscaling/v2",
    }
    assert doc["kind"] in expected_api, f"unexpected kind {doc['kind']} in {path}"
    assert doc["apiVersion"] == expected_api[doc["kind"]]


def test_kustomizations_list_existing_files():
    listed = set()
    for path, k in KUSTOMIZATIONS:
        for res in k["resources"]:
            target = (path.parent / res).resolve()
            assert target.exists(), f"{path}: resource {res} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{path}: {res} is not a kustomization"
            else:
                listed.add(target)
    # Every manifest is reachable from a kustomization, except the tools/ helpers.
    for path, _ in OBJECTS:
        if "tools" not in path.relative_to(K8S).parts:
            assert path.resolve() in listed, f"{path} is not listed in any kustomization.yaml"


def test_default_kustomization_is_stock_only():
    top = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "scann" not in top["resources"]
    assert "stock" in top["resources"] and "common" in top["resources"]


WORKLOADS = [(p, d) for p, d in OBJECTS if d["kind"] in WORKLOAD_KINDS]


@pytest.mark.parametrize("path,doc", WORKLOADS, ids=_ids(WORKLOADS))
def test_images_pinned_and_resources_set(path, doc):
    for c in _containers(doc):
        repo, tag, digest = _image_repo_tag(c["image"])
        assert tag or digest, f"{c['image']}: no tag"
        assert tag != "latest" and not (tag or "").startswith("latest"), c["image"]
        res = c.get("resources", {})
        for section in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(section, {})), f"{c['name']}: resources.{section}"


DEPLOYMENTS = [(p, d) for p, d in OBJECTS if d["kind"] == "Deployment"]


@pytest.mark.parametrize("path,dep", DEPLOYMENTS, ids=_ids(DEPLOYMENTS))
def test_deployment_selector_and_probes(path, dep):
    selector = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector and all(labels.get(k) == v for k, v in selector.items())
    for c in dep["spec"]["template"]["spec"]["containers"]:
        assert "readinessProbe" in c and "livenessProbe" in c, c["name"]
        port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe not in c:
                continue
            spec = c[probe]
            handler = spec.get("httpGet") or spec.get("tcpSocket") or spec.get("grpc")
            assert handler, f"{probe} without handler"
            port = handler["port"]
            assert port in port_names or port in port_names.values(), f"{probe} port {port}"
            # TF Serving has no grpc.health.v1 service: a grpc probe would never pass.
            assert "grpc" not in spec, f"{probe}: TF Serving has no gRPC health service"


def test_deployment_selectors_do_not_overlap():
    deps = _by_kind("Deployment")
    sels = [d["spec"]["selector"]["matchLabels"] for d in deps.values()]
    for i, a in enumerate(sels):
        for b in sels[i + 1 :]:
            assert a != b


@pytest.mark.parametrize("name", [STOCK_DEPLOYMENT, SCANN_DEPLOYMENT])
def test_serving_container_flags_match_ports_and_mounts(name):
    dep = _by_kind("Deployment")[name]
    c = _serving_container(dep)
    assert c["command"] == ["/usr/bin/tensorflow_model_server"]
    flags = _flags(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": GRPC_PORT, "http": REST_PORT}
    assert int(flags["port"]) == ports["grpc"]
    assert int(flags["rest_api_port"]) == ports["http"]
    assert flags["model_config_file"] == "/config/models.config"
    # Both config files come from ConfigMaps mounted into the container.
    _resolve_mounted_file(dep, c, flags["model_config_file"])
    cm_name, key = _resolve_mounted_file(dep, c, flags["monitoring_config_file"])
    monitoring = _by_kind("ConfigMap")[cm_name]["data"][key]
    m = re.search(r'prometheus_config\s*\{[^}]*enable:\s*true[^}]*path:\s*"([^"]+)"', monitoring)
    assert m, "monitoring config must enable prometheus_config with a path"
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/path"] == m.group(1)
    assert int(ann["prometheus.io/port"]) == REST_PORT  # TF Serving serves metrics on REST
    # Models come from /models (the PVC), read-only.
    (models_mount,) = [v for v in c["volumeMounts"] if v["mountPath"] == "/models"]
    assert models_mount.get("readOnly") is True
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    pvc = vols[models_mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert pvc in _by_kind("PersistentVolumeClaim")


def test_readiness_checks_a_served_model():
    for name in (STOCK_DEPLOYMENT, SCANN_DEPLOYMENT):
        c = _serving_container(_by_kind("Deployment")[name])
        path = c["readinessProbe"]["httpGet"]["path"]
        m = re.fullmatch(r"/v1/models/([a-z_]+)(/metadata)?", path)
        assert m, path
        assert m.group(1) in _model_names(_models_config_of(name))
    scann = _serving_container(_by_kind("Deployment")[SCANN_DEPLOYMENT])
    assert scann["readinessProbe"]["httpGet"]["path"].startswith(f"/v1/models/{names.RETRIEVAL_MODEL}")


SERVICES = [(p, d) for p, d in OBJECTS if d["kind"] == "Service"]


@pytest.mark.parametrize("path,svc", SERVICES, ids=_ids(SERVICES))
def test_service_targets_container_ports(path, svc):
    selector = svc["spec"]["selector"]
    matching = [
        d
        for d in _by_kind("Deployment").values()
        if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
    ]
    assert len(matching) == 1, f"Service {svc['metadata']['name']} selects {len(matching)} Deployments"
    (dep,) = matching
    cports = {p["name"]: p["containerPort"] for c in _containers(dep) for p in c.get("ports", [])}
    resolved = {}
    for sp in svc["spec"]["ports"]:
        target = sp.get("targetPort", sp["port"])
        assert target in cports or target in cports.values(), f"targetPort {target} not a container port"
        resolved[sp["name"]] = cports.get(target, target)
    assert resolved["grpc"] == GRPC_PORT
    assert resolved["http"] == REST_PORT
    assert resolved["metrics"] == REST_PORT  # TF Serving's Prometheus endpoint lives on REST
    port_numbers = [sp["port"] for sp in svc["spec"]["ports"]]
    assert len(port_numbers) == len(set(port_numbers))


def test_hpa_targets_deployments():
    deps = _by_kind("Deployment")
    hpas = _by_kind("HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == set(deps)
    for h in hpas.values():
        ref = h["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["apiVersion"] == "apps/v1"
        assert 1 <= h["spec"]["minReplicas"] <= h["spec"]["maxReplicas"]
        (metric,) = [m for m in h["spec"]["metrics"] if m["type"] == "Resource"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"]["type"] == "Utilization"
        # Utilization is relative to requests, so the target must have a CPU request.
        for c in deps[ref["name"]]["spec"]["template"]["spec"]["containers"]:
            assert "cpu" in c["resources"]["requests"]


# --------------------------------------------------------------------------- models.config


MODEL_CONFIGMAPS = [
    (p, d) for p, d in OBJECTS if d["kind"] == "ConfigMap" and "models.config" in d.get("data", {})
]


@pytest.mark.parametrize("path,cm", MODEL_CONFIGMAPS, ids=_ids(MODEL_CONFIGMAPS))
def test_cluster_models_config_parses(path, cm):
    cfg = _parse_models_config(cm["data"]["models.config"])
    model_names = _model_names(cfg)
    assert model_names, "empty model_config_list"
    assert len(model_names) == len(set(model_names))
    assert set(model_names) <= set(names.ALL_MODELS)
    for c in cfg.model_config_list.config:
        assert c.base_path == f"/models/{c.name}"
        assert c.model_platform == "tensorflow"
        # Rollback story of deploy/README.md: two versions kept loaded.
        assert c.model_version_policy.WhichOneof("policy_choice") == "latest"
        assert c.model_version_policy.latest.num_versions == 2


def test_stock_image_does_not_serve_scann_model():
    dep = _by_kind("Deployment")[STOCK_DEPLOYMENT]
    repo, tag, _ = _image_repo_tag(_serving_container(dep)["image"])
    assert repo == STOCK_IMAGE_REPO and tag == "2.16.1"
    served = set(_model_names(_models_config_of(STOCK_DEPLOYMENT)))
    assert names.RETRIEVAL_MODEL not in served and names.RECOMMENDER_MODEL not in served
    assert served == {names.RETRIEVAL_BRUTE_FORCE_MODEL, names.RANKING_MODEL, names.RECOMMENDER_BRUTE_FORCE_MODEL}


def test_scann_image_serves_all_models():
    dep = _by_kind("Deployment")[SCANN_DEPLOYMENT]
    repo, tag, _ = _image_repo_tag(_serving_container(dep)["image"])
    assert repo != STOCK_IMAGE_REPO, "the ScaNN model needs the custom image"
    assert tag.startswith("2.16.1")
    assert set(_model_names(_models_config_of(SCANN_DEPLOYMENT))) == set(names.ALL_MODELS)


def test_local_models_config_consistent_with_cluster():
    if not SERVING_MODELS_CONFIG.exists():
        pytest.skip("serving/models.config not written yet")
    local = _parse_models_config(SERVING_MODELS_CONFIG.read_text())
    local_names = set(_model_names(local))
    stock = set(_model_names(_models_config_of(STOCK_DEPLOYMENT)))
    assert local_names == stock | {names.RETRIEVAL_MODEL, names.RECOMMENDER_MODEL}
    assert local_names == set(names.ALL_MODELS)
    assert local_names == set(_model_names(_models_config_of(SCANN_DEPLOYMENT)))
    # Same directory names under the base path, locally and in the cluster.
    for c in local.model_config_list.config:
        assert pathlib.PurePosixPath(c.base_path).name == c.name
