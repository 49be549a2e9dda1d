"""Offline checks of rendered manifests: Kubernetes schemas, operator CRs, and our policies.

Three layers, each returning readable one-line problems (empty list = pass):
- `schema_problems`: built-in kinds against the Kubernetes OpenAPI schemas shipped in PyPI's
  kubernetes-validate (strict: unknown fields are errors), for the oldest and newest
  Kubernetes versions we support.
- `custom_resource_problems`: Strimzi, CloudNativePG and KEDA CRDs are not obtainable offline,
  so their resources get a structural check of the fields those operators require and of
  cross-references (topic -> Kafka cluster, ScaledObject -> Deployment and topic).
- `policy_problems`: what every workload must have (limits, probes, hardening, pinned images,
  a PDB, NetworkPolicies, scrape annotations, resolvable config and secret references), and
  that every place a container writes is a writable volume: root filesystems are read-only,
  so each variable in WRITE_PATHS — as the container sees it: the image's ENV (read from
  deploy/Dockerfile), then the ConfigMap, then its own env; or, unset, the code's default —
  and every absolute path in its command must lie on an emptyDir/PVC mount, or (BAKED) be
  filled in the image at build time so the code finds its files there and writes nothing.
"""

from __future__ import annotations

import base64
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

from runtime import ports

K8S_VERSIONS = ("1.28.0", "1.37.0")  # 1.28: first with the pod-index label on StatefulSets
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# Containers without any server to probe (names). They only consume/poll and publish; a dead
# one exits and the container restarts. They need a health/metrics port to be probed.
PROBE_EXEMPT = {
    "outbox-relay": "no server: services.outbox_relay exposes no health port",
    "embedding-worker": "no server: services.embedding.worker exposes no health port",
}
# Variables naming where a process writes, and where the code writes when one is unset (in
# the image /app is the source tree, on the read-only root filesystem). Values are resolved
# against the container's environment.
WRITE_PATHS: dict[str, Callable[[dict[str, str]], str]] = {
    # runtime/config.py data_dir (snapshots, runs, models, caches, infra state)
    "MAGICLENS_DATA_DIR": lambda env: "/app/data",
    # trainer/weights/compact.py weights_dir(): converted pretrained weights, written on a miss
    "MAGICLENS_WEIGHTS_DIR": lambda env: "/app/data/weights",
    # services/embedding/model.py: the XLA cache defaults to beside the weights
    "MAGICLENS_JAX_CACHE_DIR": lambda env: posixpath.join(posixpath.dirname(
        _resolved(env, "MAGICLENS_WEIGHTS_DIR")), "cache", "jax"),
    # services/embedding/worker.py: the current-model file, and fetched checkpoints beside it
    "MAGICLENS_CURRENT_MODEL_FILE": lambda env: posixpath.join(
        _resolved(env, "MAGICLENS_DATA_DIR"), "serving", "current_model.json"),
    "HOME": lambda env: "/",  # caches of libraries (PyTriton, matplotlib)
    "TMPDIR": lambda env: "/tmp",  # Python's tempfile
}
# Of those, the ones an image may satisfy read-only: it is built with the files the code would
# otherwise write there (deploy/Dockerfile, stage `weights`), so it only reads them. The path
# must be exactly a COPY destination of the image (not merely inside /app).
BAKED = {"MAGICLENS_WEIGHTS_DIR": "converted at build time (Dockerfile stage `weights`)"}
# Containers that write no file at all (names), with the reason.
WRITE_EXEMPT = {
    "migrate": "runtime.db reads its SQL files from the image and writes only to "
               "PostgreSQL",
}
WRITABLE_VOLUMES = ("emptyDir", "persistentVolumeClaim", "ephemeral")
DOCKERFILE = Path(__file__).resolve().parent / "Dockerfile"
IMAGE_PREFIX = "magiclens-"  # ghcr.io/magiclens/magiclens-<Dockerfile target>:<tag>

# Secrets that an operator in the cluster creates (not rendered by kustomize).
OPERATOR_SECRETS = {"magiclens-pg-app": ("postgresql.cnpg.io/v1", "Cluster", "magiclens-pg")}
PLACEHOLDER = "REPLACE_ME"
_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")

Doc = dict[str, Any]


def load_docs(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def kn(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def _by_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


# ---------------------------------------------------------------- schemas (built-in kinds)

CUSTOM_API_GROUPS = ("kafka.strimzi.io/", "postgresql.cnpg.io/", "keda.sh/",
                     "monitoring.coreos.com/")


def is_custom(doc: Doc) -> bool:
    return str(doc.get("apiVersion", "")).startswith(CUSTOM_API_GROUPS)


def schema_problems(docs: Iterable[Doc], versions: Iterable[str] = K8S_VERSIONS) -> list[str]:
    problems = []
    for doc in docs:
        if is_custom(doc):
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                problems.append(f"{kn(doc)} (k8s {version}): {path}: {exc.message}")
            except SchemaNotFoundError:
                problems.append(f"{kn(doc)}: no Kubernetes {version} schema for "
                                f"{doc.get('apiVersion')} {doc.get('kind')}")
    return problems


# ---------------------------------------------------------------- custom resources

def _get(doc: Doc, path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def custom_resource_problems(docs: list[Doc]) -> list[str]:
    """Structural checks of the operator CRs (their CRD schemas are not available offline)."""
    p: list[str] = []
    kafkas = {d["metadata"]["name"] for d in _by_kind(docs, "Kafka")}
    topics = set()
    workloads = {(d["kind"], d["metadata"]["name"]) for d in docs
                 if d.get("kind") in WORKLOAD_KINDS}
    known = {("kafka.strimzi.io/v1beta2", k)
             for k in ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser")}
    known |= {("postgresql.cnpg.io/v1", "Cluster"), ("keda.sh/v1alpha1", "ScaledObject"),
              ("keda.sh/v1alpha1", "TriggerAuthentication")}
    known |= {("monitoring.coreos.com/v1", k) for k in ("PodMonitor", "PrometheusRule")}
    for d in docs:
        if not is_custom(d):
            continue
        kind, name = d.get("kind"), kn(d)
        if (d.get("apiVersion"), kind) not in known:
            p.append(f"{name}: unchecked custom resource {d.get('apiVersion')} (add a check)")
            continue
        spec = d.get("spec") or {}
        if kind == "Kafka":
            listeners = _get(d, "spec.kafka.listeners")
            if not isinstance(listeners, list) or not listeners:
                p.append(f"{name}: spec.kafka.listeners must be a non-empty list")
            for li in listeners or []:
                for key in ("name", "port", "type", "tls"):
                    if key not in li:
                        p.append(f"{name}: listener {li.get('name')} lacks {key}")
            ann = d["metadata"].get("annotations", {})
            if ann.get("strimzi.io/node-pools") != "enabled":
                p.append(f"{name}: node pools need annotation strimzi.io/node-pools: enabled")
            if "zookeeper" in spec:
                p.append(f"{name}: ZooKeeper is gone from Strimzi; use KRaft node pools")
        elif kind == "KafkaNodePool":
            if not _pos_int(spec.get("replicas")):
                p.append(f"{name}: spec.replicas must be a positive integer")
            roles = spec.get("roles")
            if not roles or not set(roles) <= {"controller", "broker"}:
                p.append(f"{name}: spec.roles must be a subset of controller, broker")
            if not _get(d, "spec.storage.type"):
                p.append(f"{name}: spec.storage.type is required")
            cluster = d["metadata"].get("labels", {}).get("strimzi.io/cluster")
            if cluster not in kafkas:
                p.append(f"{name}: strimzi.io/cluster={cluster} names no Kafka in the output")
        elif kind == "KafkaTopic":
            cluster = d["metadata"].get("labels", {}).get("strimzi.io/cluster")
            if cluster not in kafkas:
                p.append(f"{name}: strimzi.io/cluster={cluster} names no Kafka in the output")
            for key in ("partitions", "replicas"):
                if not _pos_int(spec.get(key)):
                    p.append(f"{name}: spec.{key} must be a positive integer")
            topics.add(spec.get("topicName") or d["metadata"]["name"])
        elif kind == "KafkaUser":
            cluster = d["metadata"].get("labels", {}).get("strimzi.io/cluster")
            if cluster not in kafkas:
                p.append(f"{name}: strimzi.io/cluster={cluster} names no Kafka in the output")
            if _get(d, "spec.authentication.type") not in ("scram-sha-512", "tls"):
                p.append(f"{name}: spec.authentication.type must be scram-sha-512 or tls")
            if _get(d, "spec.authorization.type") != "simple":
                p.append(f"{name}: spec.authorization.type must be simple (ACLs)")
            for acl in _get(d, "spec.authorization.acls") or []:
                res = acl.get("resource") or {}
                if res.get("type") not in ("topic", "group") or not res.get("name"):
                    p.append(f"{name}: an ACL needs a topic or group resource with a name")
                if res.get("name") == "*" or (res.get("patternType") == "prefix"
                                              and res.get("type") == "topic"):
                    p.append(f"{name}: topic ACLs name each topic (no wildcard or prefix)")
                if not acl.get("operations"):
                    p.append(f"{name}: an ACL lists no operations")
        elif kind == "PodMonitor":
            p += _pod_monitor_problems(d, docs)
        elif kind == "PrometheusRule":
            p += _rule_problems(d)
        elif kind == "Cluster":
            if not _pos_int(spec.get("instances")):
                p.append(f"{name}: spec.instances must be a positive integer")
            size = _get(d, "spec.storage.size")
            if not isinstance(size, str) or not _QUANTITY.match(size):
                p.append(f"{name}: spec.storage.size must be a quantity like 20Gi")
    for d in _by_kind(docs, "ScaledObject"):
        name, spec = kn(d), d.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        if (ref.get("kind", "Deployment"), ref.get("name")) not in workloads:
            p.append(f"{name}: scaleTargetRef {ref.get('name')} is not a workload in the output")
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
            p.append(f"{name}: need 0 <= minReplicaCount <= maxReplicaCount")
        triggers = spec.get("triggers")
        if not isinstance(triggers, list) or not triggers:
            p.append(f"{name}: spec.triggers must be a non-empty list")
        for t in triggers or []:
            meta = t.get("metadata") or {}
            if t.get("type") == "kafka":
                for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                    if not meta.get(key):
                        p.append(f"{name}: kafka trigger lacks {key}")
                if meta.get("topic") and meta["topic"] not in topics:
                    p.append(f"{name}: topic {meta['topic']} has no KafkaTopic")
                if not all(isinstance(v, str) for v in meta.values()):
                    p.append(f"{name}: KEDA trigger metadata values must be strings")
    return p


def _pod_monitor_problems(d: Doc, docs: list[Doc]) -> list[str]:
    """Prometheus Operator's PodMonitor: a selector that picks pods of the output, and
    endpoints that name container ports those pods have."""
    name, p = kn(d), []
    match = _get(d, "spec.selector.matchLabels") or {}
    if not match:
        return [f"{name}: spec.selector.matchLabels is required"]
    pods = [w["spec"]["template"] for w in docs if w.get("kind") in WORKLOAD_KINDS
            and _matches(match, w["spec"]["template"]["metadata"].get("labels", {}))]
    if not pods:
        p.append(f"{name}: its selector matches no pod in the output")
    named = {port.get("name") for pod in pods for ctr in pod["spec"].get("containers", [])
             for port in ctr.get("ports", [])}
    endpoints = _get(d, "spec.podMetricsEndpoints")
    if not isinstance(endpoints, list) or not endpoints:
        p.append(f"{name}: spec.podMetricsEndpoints must be a non-empty list")
    for ep in endpoints or []:
        if ep.get("port") not in named:
            p.append(f"{name}: endpoint port {ep.get('port')!r} is no selected container's")
    return p


def _rule_problems(d: Doc) -> list[str]:
    """PrometheusRule: named groups of rules, each an alert or a record with an expr (the
    PromQL itself is checked against the exported series by tests/deploy)."""
    name, p = kn(d), []
    groups = _get(d, "spec.groups")
    if not isinstance(groups, list) or not groups:
        return [f"{name}: spec.groups must be a non-empty list"]
    for g in groups:
        if not g.get("name") or not g.get("rules"):
            p.append(f"{name}: every group needs a name and rules")
        for r in g.get("rules") or []:
            if bool(r.get("alert")) == bool(r.get("record")) or not r.get("expr"):
                p.append(f"{name}: rule {r.get('alert') or r.get('record')!r} needs expr and "
                         "exactly one of alert/record")
            if r.get("alert") and r.get("labels", {}).get("severity") not in (
                    "critical", "warning", "info"):
                p.append(f"{name}: alert {r['alert']} needs a severity label")
    return p


# ---------------------------------------------------------------- our policies

def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and not last.endswith(":latest")


def _containers(pod: Doc) -> list[tuple[str, Doc]]:
    spec = pod.get("spec", {})
    return ([("init", c) for c in spec.get("initContainers", [])]
            + [("main", c) for c in spec.get("containers", [])])


# ---------------------------------------------------------------- images and writable paths

@dataclass(frozen=True)
class ImageSpec:
    """What a Dockerfile target gives its containers: ENV, WORKDIR, COPY destinations."""

    env: dict[str, str]
    workdir: str
    copied: tuple[str, ...]


def dockerfile_stages(text: str) -> dict[str, list[str]]:
    """Stage name -> its instructions, the FROM line first (continuations joined, comments
    dropped)."""
    text = re.sub(r"\\\n", " ", text)
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m.group(2) or m.group(1)
            stages[current] = [line]
        elif current is not None:
            stages[current].append(line)
    return stages


def dockerfile_images(text: str) -> dict[str, ImageSpec]:
    """Every stage of a Dockerfile, with what it inherits from the stages it is built on."""
    stages = dockerfile_stages(text)
    out: dict[str, ImageSpec] = {}

    def spec(name: str) -> ImageSpec:
        if name in out:
            return out[name]
        base, lines = stages[name][0].split()[1], stages[name][1:]
        inherited = spec(base) if base in stages else ImageSpec({}, "/", ())
        env, workdir = dict(inherited.env), inherited.workdir
        copied = list(inherited.copied)
        for line in lines:
            op, _, rest = line.partition(" ")
            op = op.upper()
            if op == "ENV":
                words = shlex.split(rest)
                if words and "=" not in words[0]:  # legacy `ENV KEY value`
                    env[words[0]] = " ".join(words[1:])
                else:
                    env.update(w.split("=", 1) for w in words)
            elif op == "WORKDIR":
                workdir = posixpath.join(workdir, rest.strip())
            elif op == "COPY":
                copied.append(posixpath.normpath(shlex.split(rest)[-1]))
        out[name] = ImageSpec(env, workdir, tuple(copied))
        return out[name]

    for name in stages:
        spec(name)
    return out


def image_target(image: str) -> str:
    """`ghcr.io/magiclens/magiclens-service-cuda:0.1.0` -> `service-cuda`."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return name.removeprefix(IMAGE_PREFIX) if name.startswith(IMAGE_PREFIX) else ""


def _resolved(env: dict[str, str], var: str) -> str:
    return env.get(var) or WRITE_PATHS[var](env)


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _writable_mounts(workload: Doc, pod: Doc, ctr: Doc) -> list[str]:
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    return [m["mountPath"] for m in ctr.get("volumeMounts", [])
            if not m.get("readOnly") and (m["name"] in claims or any(
                k in volumes.get(m["name"], {}) for k in WRITABLE_VOLUMES))]


def write_path_problems(cn: str, workload: Doc, pod: Doc, ctr: Doc,
                        config_maps: dict[str, dict[str, str]],
                        images: dict[str, ImageSpec]) -> list[str]:
    """Every place this container writes is on a writable volume (see the module docstring)."""
    if ctr["name"] in WRITE_EXEMPT:
        return []
    target = image_target(ctr.get("image", ""))
    if target not in images:
        return [f"{cn}: image {ctr.get('image')!r} is not a deploy/Dockerfile target, so where "
                "it writes cannot be checked"]
    image = images[target]
    env = dict(image.env)
    for ref in ctr.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(config_maps.get(ref["configMapRef"]["name"], {}))
    env.update({e["name"]: e["value"] for e in ctr.get("env", []) if "value" in e})
    mounts = _writable_mounts(workload, pod, ctr)
    problems = []

    def check(what: str, path: str, baked: str = "") -> None:
        path = posixpath.normpath(posixpath.join(image.workdir, path))
        if _under(path, mounts) or (baked and path in image.copied):
            return
        problems.append(f"{cn}: {what} is on the read-only root filesystem: not on a writable "
                        f"volume (mounted: {', '.join(mounts) or 'none'})"
                        + (f" nor {baked}" if baked else ""))

    for var in WRITE_PATHS:
        path = _resolved(env, var)
        check(f"{var}={path}" + ("" if var in env else " (unset: the code's default)"), path,
              BAKED.get(var, ""))
    for arg in [*ctr.get("command", [])[1:], *ctr.get("args", [])]:
        if arg.startswith("/"):
            check(f"argument {arg}", arg)
    return problems


def policy_problems(docs: list[Doc], dockerfile: str | None = None) -> list[str]:
    """`dockerfile`: the text of deploy/Dockerfile (read from the file when None)."""
    p: list[str] = []
    images = dockerfile_images(DOCKERFILE.read_text() if dockerfile is None else dockerfile)
    config_data = {d["metadata"]["name"]: {k: str(v) for k, v in (d.get("data") or {}).items()}
                   for d in _by_kind(docs, "ConfigMap")}
    config_maps = {d["metadata"]["name"] for d in _by_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"] for d in _by_kind(docs, "Secret")}
    for secret, (api, kind, owner) in OPERATOR_SECRETS.items():
        if any(d.get("apiVersion") == api and d.get("kind") == kind
               and d["metadata"]["name"] == owner for d in docs):
            secrets.add(secret)
    # Strimzi's User Operator writes each KafkaUser's password into a Secret of its name.
    secrets |= {d["metadata"]["name"] for d in _by_kind(docs, "KafkaUser")}
    pdbs = _by_kind(docs, "PodDisruptionBudget")
    nps = _by_kind(docs, "NetworkPolicy")
    for w in (d for d in docs if d.get("kind") in WORKLOAD_KINDS):
        name = w["metadata"]["name"]
        pod = w["spec"]["template"]
        labels = pod.get("metadata", {}).get("labels", {})
        if not _matches(w["spec"]["selector"].get("matchLabels", {}), labels):
            p.append(f"{kn(w)}: selector does not match its pod labels")
        if not any(_matches(b["spec"]["selector"].get("matchLabels", {}), labels)
                   for b in pdbs):
            p.append(f"{kn(w)}: no PodDisruptionBudget selects it")
        selecting = [n for n in nps if _matches(n["spec"]["podSelector"].get("matchLabels", {}),
                                                labels)]
        own = [n for n in selecting if n["spec"]["podSelector"].get("matchLabels")
               == {"app.kubernetes.io/name": name}]
        deny = [n for n in selecting if set(n["spec"].get("policyTypes", [])) >= {
            "Ingress", "Egress"} and not n["spec"].get("ingress") and not n["spec"].get("egress")]
        if not own:
            p.append(f"{kn(w)}: no NetworkPolicy of its own (podSelector on its name)")
        if not deny:
            p.append(f"{kn(w)}: no default-deny NetworkPolicy selects it")
        ann = pod.get("metadata", {}).get("annotations", {})
        if ann.get("prometheus.io/scrape") not in ("true", "false"):
            p.append(f"{kn(w)}: pod lacks the prometheus.io/scrape annotation")
        declared_ports = set()
        for _, ctr in _containers(pod):
            declared_ports |= {pt["containerPort"] for pt in ctr.get("ports", [])}
        if ann.get("prometheus.io/scrape") == "true" and \
                int(ann.get("prometheus.io/port", 0)) not in declared_ports:
            p.append(f"{kn(w)}: prometheus.io/port is not a declared container port")
        pod_sec = pod["spec"].get("securityContext", {})
        if pod["spec"].get("automountServiceAccountToken") is not False:
            p.append(f"{kn(w)}: automountServiceAccountToken should be false")
        for role, ctr in _containers(pod):
            cn = f"{kn(w)} container {ctr['name']}"
            res = ctr.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        p.append(f"{cn}: no {part}.{r}")
            sec = ctr.get("securityContext", {})
            if sec.get("runAsNonRoot", pod_sec.get("runAsNonRoot")) is not True:
                p.append(f"{cn}: runAsNonRoot is not true")
            if sec.get("readOnlyRootFilesystem") is not True:
                p.append(f"{cn}: readOnlyRootFilesystem is not true")
            if sec.get("allowPrivilegeEscalation") is not False:
                p.append(f"{cn}: allowPrivilegeEscalation is not false")
            if "ALL" not in sec.get("capabilities", {}).get("drop", []):
                p.append(f"{cn}: capabilities do not drop ALL")
            if not image_pinned(ctr.get("image", "")):
                p.append(f"{cn}: image {ctr.get('image')!r} is not pinned to a tag or digest")
            p += write_path_problems(cn, w, pod, ctr, config_data, images)
            for ref in ctr.get("envFrom", []):
                if "configMapRef" in ref and ref["configMapRef"]["name"] not in config_maps:
                    p.append(f"{cn}: ConfigMap {ref['configMapRef']['name']} is not rendered")
                if "secretRef" in ref and ref["secretRef"]["name"] not in secrets:
                    p.append(f"{cn}: Secret {ref['secretRef']['name']} is not rendered")
            for env in ctr.get("env", []):
                if "value" in env and re.search(r"(?i)secret|password|token", env["name"]):
                    p.append(f"{cn}: {env['name']} is a literal; secrets come from Secrets")
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in secrets:
                    p.append(f"{cn}: Secret {ref['name']} (env {env['name']}) is not rendered")
            if role != "main":
                continue
            if ctr["name"] in PROBE_EXEMPT:
                continue
            for probe in ("readinessProbe", "livenessProbe"):
                pr = ctr.get(probe)
                if not pr:
                    p.append(f"{cn}: no {probe}")
                    continue
                port = (pr.get("grpc") or pr.get("httpGet") or pr.get("tcpSocket") or {}).get(
                    "port")
                if port not in declared_ports:
                    p.append(f"{cn}: {probe} port {port} is not a declared container port")
    for hpa in _by_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if not any(d.get("kind") == ref["kind"] and d["metadata"]["name"] == ref["name"]
                   for d in docs):
            p.append(f"{kn(hpa)}: target {ref['kind']}/{ref['name']} is not rendered")
    p += _shard_count_problems(docs)
    return p


def _shard_count_problems(docs: list[Doc]) -> list[str]:
    """The shards' MAGICLENS_NUM_SHARDS and the root's MAGICLENS_SHARDS list must both match
    the shard StatefulSet: shard i is pod search-shard-i of the headless Service."""
    shards = [d for d in _by_kind(docs, "StatefulSet") if d["metadata"]["name"] == "search-shard"]
    cms = [d for d in _by_kind(docs, "ConfigMap")
           if "MAGICLENS_NUM_SHARDS" in (d.get("data") or {})]
    if not shards or not cms:
        return ["search-shard StatefulSet or MAGICLENS_NUM_SHARDS missing from the output"]
    data = cms[0]["data"]
    have = shards[0]["spec"].get("replicas", 1)
    p = []
    if int(data["MAGICLENS_NUM_SHARDS"]) != have:
        p.append(f"MAGICLENS_NUM_SHARDS={data['MAGICLENS_NUM_SHARDS']} but "
                 f"StatefulSet/search-shard has {have} replicas")
    want = ",".join(f"search-shard-{i}.search-shard:{ports.SEARCH_SHARD.grpc}"
                    for i in range(have))
    if data.get("MAGICLENS_SHARDS") != want:
        p.append(f"MAGICLENS_SHARDS={data.get('MAGICLENS_SHARDS')!r} but {have} shards need "
                 f"{want!r}")
    return p


def placeholder_secrets(docs: list[Doc]) -> list[str]:
    """Secret keys that still hold the committed placeholder (never apply those)."""
    found = []
    for s in _by_kind(docs, "Secret"):
        for key, val in (s.get("data") or {}).items():
            if PLACEHOLDER in base64.b64decode(val).decode(errors="replace"):
                found.append(f"{s['metadata']['name']}/{key}")
        for key, val in (s.get("stringData") or {}).items():
            if PLACEHOLDER in str(val):
                found.append(f"{s['metadata']['name']}/{key}")
    return found


def all_problems(docs: list[Doc]) -> list[str]:
    """Everything above, against deploy/Dockerfile as it is in the tree."""
    return schema_problems(docs) + custom_resource_problems(docs) + policy_problems(docs)
