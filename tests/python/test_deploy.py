"""The Kubernetes manifests (deploy/kubernetes/) and the Dockerfile.

* Every core object against Kubernetes' own OpenAPI schemas, offline, in strict mode
  (an unknown or misspelt field fails), for the oldest and the newest version checked.
* The KServe objects against the fields of KServe's own generated models (the `kserve`
  package's `openapi_types` / `attribute_map`), the ServiceMonitor against the
  prometheus-operator CRD's fields (cloudcoil's generated models): both read as source
  with `ast`, never imported; the Kubernetes types they embed against Kubernetes' schemas.
* The objects against each other: ports, probes, grace period, Secret and volume
  references, GPU asks, the image.
* The deployment files the ConfigMaps carry, served by the real binary with only what a
  pod supplies changed: its volumes (a test folder for each mount, the fixture encoder as
  the model) and its Secret (fresh tokens).
"""
import ast
import copy
import importlib.metadata
import ipaddress
import json
import re
import secrets
import shutil
import socket
import subprocess
import tomllib
import urllib.error
import urllib.request
from fnmatch import fnmatch
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from conftest import BINARY, ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
KSERVE = DEPLOY / "kserve"
ENCODER = ROOT / "tests" / "fixtures" / "encoders" / "tiny-mean"
# The oldest Kubernetes these manifests are meant for, and the newest kubernetes-validate has.
K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
CORE_KINDS = {"ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler"}
CRD_KINDS = {"ServingRuntime", "InferenceService", "ServiceMonitor"}


# ---- the manifests -----------------------------------------------------------------


def load_all():
    """Every object under deploy/kubernetes, with the file it is in."""
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


OBJECTS = load_all()


def one(kind, name=None, folder=DEPLOY):
    found = [
        d
        for p, d in OBJECTS
        if d["kind"] == kind and p.parent == folder and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {folder}, found {len(found)}"
    return found[0]


def deployment():
    return one("Deployment", "prism")


def container(dep=None):
    (c,) = (dep or deployment())["spec"]["template"]["spec"]["containers"]
    return c


def runtime():
    return one("ServingRuntime", "prism", KSERVE)


def runtime_container():
    (c,) = runtime()["spec"]["containers"]
    return c


def isvc():
    return one("InferenceService", folder=KSERVE)


def toml_of(configmap):
    (text,) = configmap["data"].values()
    return text, tomllib.loads(text)


def port_of(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port)


def prestop_seconds(c):
    """The pause a preStop hook makes (exec `sleep N`, or the `sleep` action)."""
    hook = c.get("lifecycle", {}).get("preStop")
    if not hook:
        return 0
    if "sleep" in hook:
        return hook["sleep"]["seconds"]
    cmd = hook["exec"]["command"]
    assert cmd[0] == "sleep", cmd
    return float(cmd[1])


def quantity(q):
    """A Kubernetes quantity in bytes (or plain units)."""
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    assert m, q
    scale = {None: 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(m.group(1)) * scale[m.group(2)]


def test_every_object_is_checked_somewhere():
    kinds = {d["kind"] for _, d in OBJECTS}
    assert kinds <= CORE_KINDS | CRD_KINDS | {"Kustomization"}, kinds
    assert CORE_KINDS | CRD_KINDS <= kinds, (CORE_KINDS | CRD_KINDS) - kinds


# ---- core objects: Kubernetes' schemas, strict --------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_match_the_kubernetes_schemas(version):
    checked = 0
    for path, doc in OBJECTS:
        if doc["kind"] in CORE_KINDS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.path)}")
            checked += 1
    assert checked >= 6


def test_strict_validation_refuses_a_misspelt_field():
    dep = copy.deepcopy(deployment())
    container(dep)["readinesProbe"] = container(dep).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[-1], strict=True)


def test_kustomizations_list_files_that_exist():
    for folder in (DEPLOY, KSERVE):
        k = yaml.safe_load((folder / "kustomization.yaml").read_text())
        assert k["kind"] == "Kustomization"
        for res in k["resources"]:
            assert (folder / res).is_file(), f"{folder}/kustomization.yaml lists {res}, which is missing"
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    # The Secret is a template (an apply would overwrite the real one); the
    # ServiceMonitor and the HPA need things beyond core Kubernetes.
    assert "secret.yaml" not in listed
    assert {"configmap.yaml", "deployment.yaml", "service.yaml", "pvc.yaml"} <= set(listed)


# ---- the Kubernetes types embedded in CRDs --------------------------------------------


class KubeTypes:
    """Validates a value against one definition of Kubernetes' strict schemas."""

    def __init__(self, version):
        folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
        (d,) = [p for p in folder.iterdir() if p.name.startswith(f"v{version}") and p.name.endswith("-local-strict")]
        self.defs = json.loads((d / "_definitions.json").read_text())
        self.registry = Resource.from_contents(self.defs) @ Registry()
        self.names = self.defs["$defs"].keys()

    def definition(self, short):
        """`Container` -> io.k8s.api.core.v1.Container, `ObjectMeta` -> ...meta.v1.ObjectMeta,
        `AppsV1DeploymentStrategy` -> io.k8s.api.apps.v1.DeploymentStrategy."""
        m = re.fullmatch(r"(?:K8sIoApi)?([A-Z][a-z]+)V1(\w+)", short)
        if m:
            return f"io.k8s.api.{m.group(1).lower()}.v1.{m.group(2)}"
        for prefix in ("io.k8s.api.core.v1.", "io.k8s.apimachinery.pkg.apis.meta.v1.", "io.k8s.api.apps.v1."):
            if prefix + short in self.names:
                return prefix + short
        raise KeyError(f"no Kubernetes definition for {short}")

    def errors(self, value, short, path):
        name = self.definition(short)
        schema = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{name}"}
        v = jsonschema.Draft202012Validator(schema, registry=self.registry)
        return [f"{path}.{'.'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(value)]


KUBE = KubeTypes(K8S_VERSIONS[-1])
PRIMITIVES = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "object": (object,),
    "datetime": (str,),
    "ResourceQuantity": (str, int, float),
}


def primitive_errors(value, typ, path):
    ok = isinstance(value, PRIMITIVES[typ]) and not (typ in ("int", "float") and isinstance(value, bool))
    return [] if ok else [f"{path}: expected {typ}, got {value!r}"]


# ---- KServe: its generated models ------------------------------------------------------


class KServeModels:
    """`openapi_types` and `attribute_map` of every model in the installed `kserve`
    package, read from its source: the CRDs' fields, by JSON name."""

    def __init__(self):
        folder = Path(importlib.metadata.distribution("kserve").locate_file("kserve/models"))
        self.version = importlib.metadata.version("kserve")
        self.classes = {}
        for f in folder.glob("*.py"):
            for node in ast.parse(f.read_text()).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                found = {}
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                        if stmt.targets[0].id in ("openapi_types", "attribute_map"):
                            found[stmt.targets[0].id] = ast.literal_eval(stmt.value)
                if len(found) == 2:
                    amap = found["attribute_map"]
                    self.classes[node.name] = {amap[k]: t for k, t in found["openapi_types"].items()}

    def errors(self, value, typ, path="$"):
        if typ.startswith("list["):
            if not isinstance(value, list):
                return [f"{path}: expected a list, got {value!r}"]
            return [e for i, v in enumerate(value) for e in self.errors(v, typ[5:-1], f"{path}[{i}]")]
        m = re.fullmatch(r"dict\((\w+), (.+)\)", typ)
        if m:
            if not isinstance(value, dict):
                return [f"{path}: expected a map, got {value!r}"]
            return [e for k, v in value.items() for e in self.errors(v, m.group(2), f"{path}.{k}")]
        if typ in PRIMITIVES:
            return primitive_errors(value, typ, path)
        if typ in self.classes:
            if not isinstance(value, dict):
                return [f"{path}: expected an object ({typ}), got {value!r}"]
            fields = self.classes[typ]
            out = [f"{path}.{k}: no such field in {typ} (kserve {self.version})" for k in value if k not in fields]
            return out + [e for k, v in value.items() if k in fields for e in self.errors(v, fields[k], f"{path}.{k}")]
        return KUBE.errors(value, re.sub(r"^V1(?=[A-Z])", "", typ), path)


@pytest.fixture(scope="module")
def kserve():
    return KServeModels()


def test_the_kserve_objects_use_only_fields_kserve_defines(kserve):
    sr, isv = runtime(), isvc()
    assert sr["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert isv["apiVersion"] == "serving.kserve.io/v1beta1"
    assert kserve.errors(sr, "V1alpha1ServingRuntime") == []
    assert kserve.errors(isv, "V1beta1InferenceService") == []


def test_the_kserve_check_finds_a_misspelt_field_and_a_bad_container(kserve):
    bad = copy.deepcopy(isvc())
    bad["spec"]["predictor"]["model"]["storageURI"] = bad["spec"]["predictor"]["model"].pop("storageUri")
    assert any("storageURI: no such field" in e for e in kserve.errors(bad, "V1beta1InferenceService"))
    bad = copy.deepcopy(runtime())
    bad["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    assert kserve.errors(bad, "V1alpha1ServingRuntime") != []


# ---- the ServiceMonitor: prometheus-operator's CRD, as cloudcoil generated it ---------------


class PydanticModels:
    """The fields of the pydantic models generated from a CRD (cloudcoil), read from their
    source: each field under its JSON name (the alias), its type, whether it is required,
    its pattern."""

    def __init__(self, dist, module):
        source = Path(importlib.metadata.distribution(dist).locate_file(module)).read_text()
        self.version = importlib.metadata.version(dist)
        self.classes, self.roots = {}, {}
        for node in ast.parse(source).body:
            if not isinstance(node, ast.ClassDef):
                continue
            base = ast.unparse(node.bases[0]) if node.bases else ""
            if base.startswith("RootModel["):
                self.roots[node.name] = node.bases[0].slice
                continue
            fields = {}
            for stmt in node.body:
                if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                    continue
                ann, alias, pattern = stmt.annotation, None, None
                if isinstance(ann, ast.Subscript) and ast.unparse(ann.value) == "Annotated":
                    ann, *meta = ann.slice.elts
                    for call in meta:
                        for kw in getattr(call, "keywords", []):
                            if kw.arg == "alias":
                                alias = kw.value.value
                            if kw.arg == "pattern":
                                pattern = kw.value.value
                fields[alias or stmt.target.id] = (ann, stmt.value is None, pattern)
            self.classes[node.name] = fields

    def errors(self, value, ann, path="$", pattern=None):
        if isinstance(ann, str):
            ann = ast.parse(ann, mode="eval").body
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
            ann = ast.parse(ann.value, mode="eval").body
        if isinstance(ann, ast.Subscript):
            head = ast.unparse(ann.value)
            args = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
            if head == "Optional":
                return [] if value is None else self.errors(value, args[0], path, pattern)
            if head == "List":
                if not isinstance(value, list):
                    return [f"{path}: expected a list, got {value!r}"]
                return [e for i, v in enumerate(value) for e in self.errors(v, args[0], f"{path}[{i}]")]
            if head == "Dict":
                if not isinstance(value, dict):
                    return [f"{path}: expected a map, got {value!r}"]
                return [e for k, v in value.items() for e in self.errors(v, args[1], f"{path}.{k}")]
            if head == "Union":
                tries = [self.errors(value, a, path, pattern) for a in args]
                return [] if any(not t for t in tries) else tries[0]
            if head == "Annotated":
                for call in args[1:]:
                    for kw in getattr(call, "keywords", []):
                        if kw.arg == "pattern":
                            pattern = kw.value.value
                return self.errors(value, args[0], path, pattern)
            if head == "Literal":
                allowed = [a.value for a in args]
                return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
            raise AssertionError(f"{path}: unhandled annotation {ast.unparse(ann)}")
        name = ast.unparse(ann)
        if name.startswith("apimachinery."):
            return KUBE.errors(value, name.split(".", 1)[1], path)
        if name in ("Any",):
            return []
        if name in PRIMITIVES:
            out = primitive_errors(value, name, path)
            if not out and pattern and isinstance(value, str) and not re.search(pattern, value):
                out = [f"{path}: {value!r} does not match {pattern}"]
            return out
        if name in self.roots:
            return self.errors(value, self.roots[name], path, pattern)
        if name in self.classes:
            if not isinstance(value, dict):
                return [f"{path}: expected an object ({name}), got {value!r}"]
            fields = self.classes[name]
            out = [f"{path}.{k}: no such field in {name} ({self.version})" for k in value if k not in fields]
            out += [f"{path}.{k}: required by {name}" for k, (_, req, _) in fields.items() if req and k not in value]
            for k, v in value.items():
                if k in fields:
                    ann_k, _, pat = fields[k]
                    out += self.errors(v, ann_k, f"{path}.{k}", pat)
            return out
        raise AssertionError(f"{path}: unknown type {name}")


@pytest.fixture(scope="module")
def prometheus_operator():
    return PydanticModels("cloudcoil-models-prometheus-operator", "cloudcoil/models/prometheus_operator/v1.py")


def test_the_servicemonitor_uses_only_fields_its_crd_defines(prometheus_operator):
    sm = one("ServiceMonitor", "prism")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert prometheus_operator.errors(sm, "ServiceMonitor") == []
    bad = copy.deepcopy(sm)
    bad["spec"]["endpoints"][0]["bearerToken"] = "x"
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"
    errors = prometheus_operator.errors(bad, "ServiceMonitor")
    assert any("bearerToken: no such field" in e for e in errors), errors
    assert any("interval" in e and "does not match" in e for e in errors), errors


# ---- the objects against each other -----------------------------------------------------


def test_the_configmap_binds_every_interface_on_the_container_ports():
    _, cfg = toml_of(one("ConfigMap", "prism-config"))
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    for key, name in (("http_addr", "http"), ("grpc_addr", "grpc")):
        host, port = port_of(cfg["server"][key])
        assert ipaddress.ip_address(host).is_unspecified, f"{key} = {cfg['server'][key]}: unreachable from the Service"
        assert port == ports[name], f"{key} listens on {port}, the container port `{name}` is {ports[name]}"


def test_the_services_reach_the_containers_named_ports():
    dep, c = deployment(), container()
    names = {p["name"] for p in c["ports"]}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    services = [d for _, d in OBJECTS if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"prism", "prism-pods"}
    for s in services:
        assert s["spec"]["selector"].items() <= pod_labels.items(), f"Service {s['metadata']['name']} selects no pod"
        by_name = {p["name"]: p for p in s["spec"]["ports"]}
        assert set(by_name) == {"http", "grpc"}
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in names, f"{s['metadata']['name']}: targetPort {p['targetPort']} is no container port"
        assert by_name["grpc"]["appProtocol"] in ("kubernetes.io/h2c", "grpc", "h2c")
    assert one("Service", "prism-pods")["spec"]["clusterIP"] == "None"


def test_the_probes_hit_health_on_the_http_port():
    c = container()
    http = next(p for p in c["ports"] if p["name"] == "http")
    for probe, path in (("startupProbe", "/v2/health/live"), ("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", http["containerPort"]), probe


def test_the_grace_period_outlasts_the_drain():
    _, cfg = toml_of(one("ConfigMap", "prism-config"))
    grace = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = cfg["server"]["shutdown_timeout_s"] + prestop_seconds(container())
    assert grace > drain, f"terminationGracePeriodSeconds {grace} <= preStop + shutdown_timeout_s = {drain}"


def test_config_secret_and_claim_references_resolve():
    dep, c = deployment(), container()
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert set(volumes) == set(mounts)
    cm = one("ConfigMap", "prism-config")
    (item,) = volumes["config"]["configMap"]["items"]
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"] and item["key"] in cm["data"]
    args = c["args"]
    assert args[args.index("--config") + 1] == f"{mounts['config']['mountPath']}/{item['path']}"

    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == one("PersistentVolumeClaim")["metadata"]["name"]
    assert mounts["models"]["readOnly"] is True

    secret = one("Secret", "prism-tokens")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert set(refs) == {"PRISM_API_TOKEN", "PRISM_ADMIN_TOKEN"}
    for ref in refs.values():
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert dep["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_every_path_the_deployment_file_names_is_on_a_mounted_volume():
    _, cfg = toml_of(one("ConfigMap", "prism-config"))
    c = container()
    volumes = {v["name"]: v for v in deployment()["spec"]["template"]["spec"]["volumes"]}
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    paths = [cfg["object_store"]["spill_dir"]] + [
        d["model"].get("huggingface") or d["model"].get("weights") for d in cfg["deployments"]
    ]
    for p in filter(None, paths):
        assert p.startswith("/"), f"{p}: relative paths resolve against /etc/prism, the ConfigMap's folder"
        assert any(p == m or p.startswith(m + "/") for m in mounts), f"{p} is on no volume the pod mounts"
    # Spill files stay within the emptyDir; the store within the memory limit.
    spill = next(m["name"] for m in c["volumeMounts"] if cfg["object_store"]["spill_dir"].startswith(m["mountPath"]))
    assert cfg["object_store"]["max_spill_bytes"] < quantity(volumes[spill]["emptyDir"]["sizeLimit"])
    assert cfg["object_store"]["object_store_memory"] < quantity(c["resources"]["limits"]["memory"]) / 2


def test_the_replicas_gpu_asks_fit_the_pods_gpus():
    c = container()
    assert "nvidia.com/gpu" not in c["resources"].get("requests", {}) or (
        c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
    )
    gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus == 1
    for cm in (one("ConfigMap", "prism-config"), one("ConfigMap", folder=KSERVE)):
        _, cfg = toml_of(cm)
        asked = sum(d.get("num_replicas", 1) * d.get("actor", {}).get("num_gpus", 0) for d in cfg["deployments"])
        assert 0 < asked <= gpus, f"the replicas ask for {asked} GPUs, the pod gets {gpus}"
    kserve_gpus = int(isvc()["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"])
    assert kserve_gpus == 1


def test_the_servicemonitor_scrapes_metrics_once_per_pod_with_the_token():
    sm = one("ServiceMonitor", "prism")
    selected = [
        s
        for _, s in OBJECTS
        if s["kind"] == "Service" and sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["prism"], "exactly one Service, or pods are scraped twice"
    (ep,) = sm["spec"]["endpoints"]
    assert ep["path"] == "/metrics"
    port = next(p for p in selected[0]["spec"]["ports"] if p["name"] == ep["port"])
    assert port["targetPort"] == "http", "Prism serves /metrics on its REST port"
    cred = ep["authorization"]["credentials"]
    assert ep["authorization"]["type"] == "Bearer"
    assert cred["name"] == "prism-tokens" and cred["key"] == "api-token"


def test_the_hpa_scales_the_deployment():
    hpa = one("HorizontalPodAutoscaler", "prism")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "prism"}


def test_the_kserve_runtime_listens_where_kserve_expects():
    sr, c, isv = runtime(), runtime_container(), isvc()
    cm = one("ConfigMap", folder=KSERVE)
    _, cfg = toml_of(cm)
    assert c["name"] == "kserve-container"
    assert {"v2", "grpc-v2"} <= set(sr["spec"]["protocolVersions"])
    args = c["args"]
    http = port_of(args[args.index("--http-addr") + 1])
    grpc = port_of(args[args.index("--grpc-addr") + 1])
    assert http == ("0.0.0.0", 8080) and grpc == ("0.0.0.0", 8081)
    assert (port_of(cfg["server"]["http_addr"]), port_of(cfg["server"]["grpc_addr"])) == (http, grpc)
    ports = [p["containerPort"] for p in c["ports"]]
    assert ports[0] == 8080, "KServe's Service sends port 80 to the first container port"
    assert 8081 in ports
    for probe, path in (("startupProbe", "/v2/health/live"), ("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")):
        assert c[probe]["httpGet"] == {"path": path, "port": 8080}, probe

    # The deployment file: mounted, and serving /mnt/models under the InferenceService's name.
    volumes = {v["name"]: v for v in sr["spec"]["volumes"]}
    mount = next(m for m in c["volumeMounts"] if "configMap" in volumes[m["name"]])
    vol = volumes[mount["name"]]["configMap"]
    assert vol["name"] == cm["metadata"]["name"]
    assert args[args.index("--config") + 1] == f"{mount['mountPath']}/{vol['items'][0]['path']}"
    (dep,) = cfg["deployments"]
    assert dep["model"]["huggingface"] == "/mnt/models"
    assert dep["name"] == isv["metadata"]["name"], "V2 clients address the model by the InferenceService's name"

    # The InferenceService uses this runtime, a format and protocol it declares, the claim.
    model = isv["spec"]["predictor"]["model"]
    assert model["runtime"] == sr["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in sr["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in sr["spec"]["protocolVersions"]
    claim = re.fullmatch(r"pvc://([^/]+)/.+", model["storageUri"]).group(1)
    assert claim == one("PersistentVolumeClaim")["metadata"]["name"]
    # Two ports need KServe's raw deployment (Knative takes one).
    assert isv["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    grace = isv["spec"]["predictor"]["terminationGracePeriodSeconds"]
    assert grace > cfg["server"]["shutdown_timeout_s"] + prestop_seconds(c)
    # The same image and tokens as the plain Deployment.
    assert c["image"] == container()["image"]
    assert [e for e in c["env"] if "valueFrom" in e] == [e for e in container()["env"] if "valueFrom" in e]


# ---- the Dockerfile -------------------------------------------------------------------


def dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    return text, re.sub(r"\\\n", " ", text)


def test_the_dockerfile_builds_the_server_and_runs_it_as_the_pods_user():
    text, joined = dockerfile()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.M)
    assert stages[0][0].startswith("rust:") and "cargo build --release --locked -p prism-server" in joined
    assert ("debian:bookworm-slim", "cpu") in stages
    assert stages[-1][1] == "gpu", "the default target is the last stage"
    name = re.search(r'^name = "(.+)"', (ROOT / "server" / "Cargo.toml").read_text(), re.M).group(1)
    assert name == "prism-server"
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert exposed == {p["containerPort"] for p in container()["ports"]}
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users[-1] == "10001:10001"
    ctx = deployment()["spec"]["template"]["spec"]["securityContext"]
    assert users[-1] == f"{ctx['runAsUser']}:{ctx['runAsGroup']}"
    assert "NVIDIA_VISIBLE_DEVICES=all" in joined and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in joined
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    assert entry == ["/usr/local/bin/prism-server"]


def test_the_image_ships_the_cuda_libraries_the_tests_compile_with():
    _, joined = dockerfile()
    pins = dict(
        line.split("==")
        for line in (ROOT / "tests" / "cuda" / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for wheel in ("nvidia-cuda-nvrtc", "nvidia-cublas"):
        assert f"{wheel}=={pins[wheel]}" in joined, wheel
    for lib in ("libnvrtc.so.13", "libnvrtc-builtins.so.13.0", "libcublas.so.13", "libcublasLt.so.13"):
        assert lib in joined, lib


def test_the_build_context_keeps_the_workspace_and_drops_the_rest():
    patterns = [
        l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")
    ]

    def ignored(path):
        return any(fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)

    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    for keep in ["Cargo.toml", "Cargo.lock"] + [f"{m}/Cargo.toml" for m in members] + ["protocol/proto"]:
        assert not ignored(keep), keep
    for drop in ("target", ".git"):
        assert ignored(drop), drop


def test_the_images_default_arguments_are_accepted(tmp_path):
    text, _ = dockerfile()
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert cmd[cmd.index("--http-addr") + 1] == "0.0.0.0:8000"
    done = subprocess.run([str(BINARY), *cmd, "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_images_healthcheck_reads_readiness(prism):
    _, joined = dockerfile()
    check = re.search(r"^HEALTHCHECK .*?CMD (.+)$", joined, re.M).group(1)
    server = prism()
    port = server.url.rsplit(":", 1)[1]
    ok = subprocess.run(["sh", "-c", check], env={"PRISM_HEALTH_PORT": port, "PATH": "/usr/bin:/bin"}, timeout=10)
    assert ok.returncode == 0
    bad = subprocess.run(["sh", "-c", check], env={"PRISM_HEALTH_PORT": closed_port(), "PATH": "/usr/bin:/bin"}, timeout=10)
    assert bad.returncode != 0


def closed_port():
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


# ---- the deployment files, served as a pod would serve them ------------------------------------


def request(url, path, token=None, body=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(body).encode()
    req = urllib.request.Request(f"http://{url}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Pod:
    """What a pod supplies, laid out in a test folder: one folder per volume mount (the
    ConfigMap's file in its mount, the fixture encoder wherever the deployment file names
    a model folder), and the deployment file with each mount path mapped to its folder."""

    def __init__(self, root, configmap, mounts):
        self.root = root
        text, cfg = toml_of(configmap)
        self.map = {}
        for m in sorted(mounts, key=len, reverse=True):
            self.map[m] = root / m.strip("/").replace("/", "_")
            self.map[m].mkdir(parents=True, exist_ok=True)
        for d in cfg["deployments"]:
            folder = d["model"].get("huggingface")
            if folder:
                shutil.copytree(ENCODER, self.path(folder), dirs_exist_ok=True)
        # One pass, longest mount first: a folder put in must not be mapped again.
        mounts_re = "|".join(re.escape(m) for m in self.map)
        self.text = re.sub(rf'"({mounts_re})(?=[/"])', lambda m: f'"{self.map[m.group(1)]}', text)
        self.config = cfg

    def path(self, p):
        for mount, folder in self.map.items():
            if p == mount or p.startswith(mount + "/"):
                return folder / p[len(mount) :].lstrip("/")
        raise AssertionError(f"{p} is on no volume of the pod")

    def write_config(self, at):
        target = self.path(at)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.text)
        return target


def env_of(c, tokens):
    """The container's environment, its Secret's keys given `tokens`."""
    env = {}
    for e in c["env"]:
        env[e["name"]] = tokens[e["valueFrom"]["secretKeyRef"]["key"]] if "valueFrom" in e else e["value"]
    return env


def mapped_args(args, pod):
    return [str(pod.path(a)) if a.startswith("/") else a for a in args]


def serve_and_check(prism, config_path, env, tokens, model):
    server = prism(config_path, env=env)
    # The probes send no token.
    assert request(server.url, "/v2/health/live")[0] == 200
    assert request(server.url, "/v2/health/ready")[0] == 200
    status, _ = request(server.url, f"/v2/models/{model}")
    assert status == 401, "an API token guards the models"
    body = {"inputs": [{"name": "TEXT", "shape": [2], "datatype": "BYTES", "data": ["A man plays a guitar.", "Hi"]}]}
    status, text = request(server.url, f"/v2/models/{model}/infer", tokens["api-token"], body)
    assert status == 200, text
    (out,) = json.loads(text)["outputs"]
    assert out["name"] == "EMBEDDING" and out["shape"][0] == 2
    return server


def checked_pod(tmp_path, c, configmap, extra_mounts=()):
    """The pod `c` would run in, laid out under tmp_path, with fresh tokens; the
    container's own arguments are checked by the binary (--check loads the models and
    binds nothing). Returns the pod, its deployment file, the tokens and the env."""
    pod = Pod(tmp_path, configmap, [m["mountPath"] for m in c["volumeMounts"]] + list(extra_mounts))
    args = c["args"]
    config = pod.write_config(args[args.index("--config") + 1])
    tokens = {"api-token": secrets.token_hex(16), "admin-token": secrets.token_hex(16)}
    env = env_of(c, tokens)
    done = subprocess.run(
        [str(BINARY), *mapped_args(args, pod), "--check"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return pod, config, tokens, env


def test_the_deployments_configmap_serves_as_a_pod_would(prism, tmp_path):
    pod, config, tokens, env = checked_pod(tmp_path, container(), one("ConfigMap", "prism-config"))
    (model,) = [d["name"] for d in pod.config["deployments"]]
    server = serve_and_check(prism, config, env, tokens, model)
    # What Prometheus scrapes, with the token the ServiceMonitor sends; the HPA's metric.
    assert request(server.url, "/metrics")[0] == 401
    status, metrics = request(server.url, "/metrics", tokens["api-token"])
    assert status == 200
    metric = one("HorizontalPodAutoscaler", "prism")["spec"]["metrics"][0]["pods"]["metric"]
    labels = metric["selector"]["matchLabels"]
    series = [l for l in metrics.splitlines() if l.startswith(metric["name"] + "{")]
    assert any(all(f'{k}="{v}"' in l for k, v in labels.items()) for l in series), series
    # Every replica the file declares is running (on the CPU where there is no GPU).
    status, text = request(server.url, "/v2/status", tokens["api-token"])
    assert status == 200
    (d,) = [d for d in json.loads(text)["deployments"] if d["name"] == model]
    (declared,) = pod.config["deployments"]
    assert [r["health"]["state"] for r in d["replicas"]] == ["running"] * declared["num_replicas"]


def test_the_kserve_configmap_serves_as_a_runtime_pod_would(prism, tmp_path):
    # KServe mounts the storageUri at /mnt/models; the runtime mounts the rest.
    _, config, tokens, env = checked_pod(
        tmp_path, runtime_container(), one("ConfigMap", folder=KSERVE), extra_mounts=["/mnt/models"]
    )
    serve_and_check(prism, config, env, tokens, isvc()["metadata"]["name"])


def test_the_secret_templates_placeholders_refuse_to_serve(tmp_path):
    c = container()
    pod = Pod(tmp_path, one("ConfigMap", "prism-config"), [m["mountPath"] for m in c["volumeMounts"]])
    config = pod.write_config(c["args"][1])
    env = env_of(c, one("Secret", "prism-tokens")["stringData"])
    proc = subprocess.run(
        [str(BINARY), "--config", str(config), "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "PRISM_API_TOKEN" in proc.stderr
