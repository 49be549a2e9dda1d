"""The kustomize overlays render, validate, follow our policies and match the code's contracts.

Rendering needs a kubectl binary (`kubectl kustomize`); without one these tests skip with the
reason. Everything else is offline: Kubernetes schemas from PyPI's kubernetes-validate, and
structural checks of the operator CRs (deploy/policy.py says why).
"""

from __future__ import annotations

import base64
import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from deploy import catalog, gen_base, policy, tool  # noqa: E402
from runtime.topics import ALL_TOPICS, MODELS_PUBLISHED  # noqa: E402

ENVS = ("dev", "prod")


def _render(env: str) -> str:
    try:
        tool.kubectl_path()
    except tool.ToolError as exc:
        pytest.skip(f"{exc} (needed to render overlays)")
    return tool.render(env)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[policy.Doc]]:
    return {env: policy.load_docs(_render(env)) for env in ENVS}


def _find(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert found, f"{kind}/{name} not rendered"
    return found[0]


def _workloads(docs):
    return [d for d in docs if d["kind"] in policy.WORKLOAD_KINDS]


@pytest.mark.parametrize("env", ENVS)
def test_overlay_passes_schemas_crs_and_policies(rendered, env):
    docs = rendered[env]
    assert {d["metadata"]["name"] for d in _workloads(docs)} == set(catalog.BY_NAME)
    assert policy.schema_problems(docs) == []
    assert policy.custom_resource_problems(docs) == []
    assert policy.policy_problems(docs) == []


@pytest.mark.parametrize("env", ENVS)
def test_kafka_topics_equal_the_topic_table(rendered, env):
    topics = {(d["spec"]["topicName"], d["spec"]["partitions"])
              for d in rendered[env] if d["kind"] == "KafkaTopic"}
    assert topics == {(t.name, t.partitions) for t in ALL_TOPICS}


def test_generated_base_is_up_to_date():
    assert gen_base.main(["--check"]) == 0, "run `python -m deploy.gen_base`"


def test_ports_match_docs_runtime_table():
    """Ports in the workload table are the ones docs/runtime.md promises."""
    doc = (ROOT / "docs" / "runtime.md").read_text()
    row = {m.group(1).strip(): m.group(2) for m in
           re.finditer(r"^\| ([a-z ()/]+?) \| ([^|]+) \|", doc, re.MULTILINE)}
    assert row["mining"].startswith("50051") and "9151" in doc
    expected = {"mining": (50051, 9151), "triplegen": (50052, 9152),
                "training": (50053, 9153),
                "search-root": (50055, 9155), "search-shard": (50060, 9160)}
    for name, (grpc_port, metrics) in expected.items():
        w = catalog.BY_NAME[name]
        assert (w.grpc_port, w.metrics_port) == (grpc_port, metrics), name
    for line, needle in (("search root", "50055 | 9155"), ("search shard i", "50060+i"),
                         ("web gateway", "HTTP 8080"), ("triplegen", "50052 | 9152")):
        assert needle in doc.split(f"| {line} |", 1)[1].splitlines()[0], line
    assert catalog.BY_NAME["gateway"].http_port == 8080
    # The embedding pod is Triton (HTTP 8000, gRPC 8001, its metrics 8002) + the worker; the
    # 50054 "facade" of the docs table does not exist as a process.
    triton = catalog.BY_NAME["embedding"]
    assert "Triton gRPC 8001, HTTP 8000" in doc
    assert (triton.http_port, dict(triton.extra_ports)["triton-grpc"]) == (8000, 8001)


def test_dev_runs_single_replicas(rendered):
    docs = rendered["dev"]
    assert all(d["spec"]["replicas"] == 1 for d in _workloads(docs))
    assert all(d["spec"]["maxReplicaCount"] == 1 for d in docs if d["kind"] == "ScaledObject")
    assert _find(docs, "ConfigMap", _cm_name(docs))["data"]["MAGICLENS_NUM_SHARDS"] == "1"


def _cm_name(docs):
    return next(d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"
                and d["metadata"]["name"].startswith(catalog.CONFIG_MAP))


def test_prod_shape(rendered):
    docs = rendered["prod"]
    shards = _find(docs, "StatefulSet", "search-shard")
    assert shards["spec"]["replicas"] == 4
    assert shards["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"][
        "storage"] == "100Gi"
    assert _find(docs, "ConfigMap", _cm_name(docs))["data"]["MAGICLENS_NUM_SHARDS"] == "4"
    headless = _find(docs, "Service", "search-shard")["spec"]
    assert headless["clusterIP"] == "None"
    for name in ("embedding", "training"):
        pod = _find(docs, "Deployment", name)["spec"]["template"]["spec"]
        ctr = pod["containers"][0]
        assert ctr["name"] == catalog.BY_NAME[name].container_name
        assert ctr["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), name
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
        assert "cuda" in ctr["image"], name
    assert _find(docs, "Deployment", "mining")["spec"]["replicas"] > 1
    assert _find(docs, "Deployment", "triplegen")["spec"]["replicas"] > 1
    assert _find(docs, "KafkaNodePool", "dual-role")["spec"]["replicas"] == 3
    assert _find(docs, "Cluster", catalog.PG_CLUSTER)["spec"]["instances"] == 3
    assert all(d["spec"]["replicas"] == 3 for d in docs if d["kind"] == "KafkaTopic")
    hpa = _find(docs, "HorizontalPodAutoscaler", "search-root")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize("env", ENVS)
def test_keda_scales_workers_on_their_consumer_group(rendered, env):
    scaled = {d["metadata"]["name"]: d for d in rendered[env] if d["kind"] == "ScaledObject"}
    assert set(scaled) == {"mining", "triplegen"}
    for name, so in scaled.items():
        group, topic = catalog.BY_NAME[name].keda
        meta = so["spec"]["triggers"][0]["metadata"]
        assert (meta["consumerGroup"], meta["topic"]) == (group, topic)
        assert meta["bootstrapServers"] == catalog.KAFKA_BOOTSTRAP
        # The runtime's Consumer names its group magiclens-<name> (runtime/bus.py).
        assert group == f"magiclens-{name}"
        # Tansu locally, Kafka in clusters: never rely on `latest` (see the platform brief).
        assert meta["offsetResetPolicy"] == "earliest"


def test_network_policies_allow_exactly_the_catalog_calls(rendered):
    docs = rendered["dev"]
    nps = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    deny = nps["magiclens-default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny
    root = nps["search-root"]
    egress = {(r["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
               r["ports"][0]["port"]) for r in root["egress"]}
    assert egress == {("search-shard", 50060), ("embedding", 8001)}
    shard_from = {r["from"][0].get("podSelector", {}).get("matchLabels", {}).get(
        "app.kubernetes.io/name") for r in nps["search-shard"]["ingress"]}
    assert "search-root" in shard_from and "gateway" not in shard_from
    # The relay calls nobody and is called by nobody; only Prometheus scrapes its metrics.
    assert nps["outbox-relay"]["egress"] == []
    assert nps["outbox-relay"]["ingress"] == [{
        "from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": catalog.MONITORING_NAMESPACE}}}],
        "ports": [{"protocol": "TCP", "port": catalog.BY_NAME["outbox-relay"].metrics_port}]}]
    internet = nps["magiclens-allow-internet"]["egress"][0]["to"][0]["ipBlock"]
    assert "10.0.0.0/8" in internet["except"]  # the crawler cannot reach cluster addresses
    mining_labels = _find(docs, "Deployment", "mining")["spec"]["template"]["metadata"]["labels"]
    assert mining_labels.get("magiclens.io/internet-client") == "true"
    root_labels = _find(docs, "Deployment", "search-root")["spec"]["template"]["metadata"][
        "labels"]
    assert "magiclens.io/internet-client" not in root_labels


def test_shard_index_comes_from_the_pod_ordinal(rendered):
    ctr = _find(rendered["prod"], "StatefulSet", "search-shard")["spec"]["template"]["spec"][
        "containers"][0]
    env = {e["name"]: e for e in ctr["env"]}
    assert env["MAGICLENS_SHARD"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    cm = _find(rendered["prod"], "ConfigMap", _cm_name(rendered["prod"]))["data"]
    assert cm["MAGICLENS_SHARDS"].split(",")[3] == "search-shard-3.search-shard:50060"
    assert cm["MAGICLENS_TRITON_URL"] == "embedding:8001"


def test_migrations_run_before_each_database_client(rendered):
    for d in _workloads(rendered["prod"]):
        w = catalog.BY_NAME[d["metadata"]["name"]]
        inits = d["spec"]["template"]["spec"].get("initContainers", [])
        if w.migrate and catalog.POSTGRES in w.uses:
            assert inits[0]["command"] == ["python", "-m", "runtime.db"], w.name
            assert inits[0]["image"].split(":")[0] in (catalog.SERVICE_IMAGE,
                                                       f"{catalog.SERVICE_IMAGE}-cuda")
        else:
            assert not inits, w.name


# ---------------------------------------------------------------- the checks can fail

def _mutated(docs, kind, name, fn):
    out = copy.deepcopy(docs)
    fn(_find(out, kind, name))
    return out


@pytest.mark.parametrize("mutation,needle", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"].pop("limits"),
     "no limits.cpu"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
        image="ghcr.io/magiclens/magiclens-service:latest"), "not pinned"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
        image="ghcr.io/magiclens/magiclens-service"), "not pinned"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe"),
     "no readinessProbe"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
        runAsNonRoot=False), "runAsNonRoot"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
        readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
    (lambda d: d["spec"]["template"]["metadata"]["annotations"].clear(), "prometheus"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}), "is a literal"),
])
def test_policy_flags_a_bad_workload(rendered, mutation, needle):
    docs = _mutated(rendered["dev"], "Deployment", "mining", mutation)
    problems = policy.policy_problems(docs)
    assert any(needle in p and "mining" in p for p in problems), problems


def test_policy_flags_missing_pdb_netpol_and_shard_mismatch(rendered):
    docs = [d for d in copy.deepcopy(rendered["dev"])
            if not (d["kind"] in ("PodDisruptionBudget", "NetworkPolicy")
                    and d["metadata"]["name"] == "triplegen")]
    _find(docs, "StatefulSet", "search-shard")["spec"]["replicas"] = 3
    problems = policy.policy_problems(docs)
    assert any("triplegen: no PodDisruptionBudget" in p for p in problems)
    assert any("triplegen: no NetworkPolicy of its own" in p for p in problems)
    assert any("MAGICLENS_NUM_SHARDS=1 but" in p for p in problems)
    assert any("MAGICLENS_SHARDS='search-shard-0.search-shard:50060' but 3 shards" in p
               for p in problems)


# ---------------------------------------------------------------- where containers write

def _container(docs, kind, name, container=None):
    pod = _find(docs, kind, name)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if container in (None, c["name"]))


def test_every_place_a_container_writes_is_a_writable_volume(rendered):
    """Root filesystems are read-only (issue 8): the XLA cache goes to the data volume, and
    the converted pretrained weights are baked into every image, not converted in the pod."""
    images = policy.dockerfile_images(policy.DOCKERFILE.read_text())
    for env in ENVS:
        docs = rendered[env]
        cm = _find(docs, "ConfigMap", _cm_name(docs))["data"]
        assert cm["MAGICLENS_JAX_CACHE_DIR"] == "/data/cache/jax"
        for d in _workloads(docs):
            for ctr in d["spec"]["template"]["spec"]["containers"]:
                image = images[policy.image_target(ctr["image"])]
                assert image.env["MAGICLENS_WEIGHTS_DIR"] == "/opt/magiclens/weights"
                assert "/opt/magiclens/weights" in image.copied
                assert {"/tmp", "/data"} <= {m["mountPath"] for m in ctr["volumeMounts"]}
        assert not [p for p in policy.policy_problems(docs) if "read-only root" in p]


def _without_cache_var(docs):
    for d in docs:
        if d["kind"] == "ConfigMap":
            (d.get("data") or {}).pop("MAGICLENS_JAX_CACHE_DIR", None)


def _unmount_data(docs):
    ctr = _container(docs, "Deployment", "embedding", "embedding-worker")
    ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["mountPath"] != "/data"]


@pytest.mark.parametrize("mutate,needle", [
    # the state issue 8 found: the XLA cache at its default beside the (read-only) weights
    (_without_cache_var, "embedding-server: MAGICLENS_JAX_CACHE_DIR=/opt/magiclens/cache/jax "
                         "(unset: the code's default) is on the read-only root filesystem"),
    (_unmount_data, "embedding-worker: MAGICLENS_CURRENT_MODEL_FILE=/data/embedding/current."
                    "json is on the read-only root filesystem: not on a writable volume "
                    "(mounted: /tmp)"),
    (lambda docs: next(m for m in _container(docs, "Deployment", "training")["volumeMounts"]
                       if m["mountPath"] == "/data").update(readOnly=True),
     "training: MAGICLENS_DATA_DIR=/data is on the read-only root"),
    (lambda docs: _container(docs, "Deployment", "mining")["env"].append(
        {"name": "MAGICLENS_DATA_DIR", "value": "/app/data"}),
     "mining: MAGICLENS_DATA_DIR=/app/data is on the read-only root"),
    (lambda docs: _container(docs, "StatefulSet", "search-shard")["env"].append(
        {"name": "TMPDIR", "value": "scratch"}),  # relative: under WORKDIR /app
     "search-shard: TMPDIR=scratch is on the read-only root"),
    (lambda docs: _container(docs, "Deployment", "embedding", "embedding-server").update(
        command=["python", "-m", "services.embedding.server", "--current-file",
                 "/app/current.json"]),
     "embedding-server: argument /app/current.json is on the read-only root"),
    (lambda docs: _container(docs, "Deployment", "gateway").update(
        image="docker.io/library/python:3.11.7"), "is not a deploy/Dockerfile target"),
])
def test_write_path_check_can_fail(rendered, mutate, needle):
    docs = copy.deepcopy(rendered["dev"])
    mutate(docs)
    problems = policy.policy_problems(docs)
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("edit,needle", [
    # weights neither baked nor pointed anywhere: the converter's default under /app
    (lambda t: t.replace(" \\\n    MAGICLENS_WEIGHTS_DIR=/opt/magiclens/weights", ""),
     "MAGICLENS_WEIGHTS_DIR=/app/data/weights (unset: the code's default) is on the "
     "read-only root"),
    # pointed at, but the image is built without the converted files
    (lambda t: re.sub(r"^COPY --from=weights .*$", "", t, flags=re.MULTILINE),
     "MAGICLENS_WEIGHTS_DIR=/opt/magiclens/weights is on the read-only root filesystem"),
])
def test_write_path_check_reads_the_images_from_the_dockerfile(rendered, edit, needle):
    text = policy.DOCKERFILE.read_text()
    edited = edit(text)
    assert edited != text
    problems = policy.policy_problems(rendered["dev"], edited)
    flagged = {p.split(":")[0] for p in problems if needle in p
               and p.endswith("nor converted at build time (Dockerfile stage `weights`)")}
    containers = {f"{policy.kn(d)} container {c['name']}" for d in _workloads(rendered["dev"])
                  for c in d["spec"]["template"]["spec"]["containers"]}
    assert flagged == containers, problems


@pytest.mark.parametrize("change,needle", [
    ({"colour": "blue"}, "colour"),  # strict: unknown fields are errors
    ({"livenessProbe": {"grpc": {"port": "grpc"}}}, "not of type 'integer'"),  # grpc: a number
])
def test_schema_check_is_strict(rendered, change, needle):
    docs = _mutated(rendered["dev"], "Deployment", "gateway",
                    lambda d: d["spec"]["template"]["spec"]["containers"][0].update(change))
    problems = policy.schema_problems([_find(docs, "Deployment", "gateway")])
    assert len(problems) == len(policy.K8S_VERSIONS) and all(needle in p for p in problems)


def test_custom_resource_check_catches_broken_crs(rendered):
    docs = copy.deepcopy(rendered["dev"])
    topic = next(d for d in docs if d["kind"] == "KafkaTopic")
    topic["spec"]["partitions"] = 0
    topic["metadata"]["labels"]["strimzi.io/cluster"] = "other"
    so = _find(docs, "ScaledObject", "mining")
    so["spec"]["triggers"][0]["metadata"]["topic"] = "magiclens.nope.v1"
    so["spec"]["scaleTargetRef"]["name"] = "nope"
    _find(docs, "Cluster", catalog.PG_CLUSTER)["spec"]["storage"]["size"] = "lots"
    docs.append({"apiVersion": "keda.sh/v1alpha1", "kind": "ClusterTriggerAuthentication",
                 "metadata": {"name": "x"}, "spec": {}})
    problems = "\n".join(policy.custom_resource_problems(docs))
    for needle in ("spec.partitions must be", "names no Kafka", "magiclens.nope.v1 has no",
                   "scaleTargetRef nope", "spec.storage.size", "unchecked custom resource"):
        assert needle in problems


# ---------------------------------------------------------------- secrets and the tool

def test_committed_secrets_are_placeholders_and_deploy_refuses_them(rendered, tmp_path):
    assert policy.placeholder_secrets(rendered["dev"]), "the committed S3 env file changed"
    env_file = ROOT / "deploy" / "k8s" / "base" / "secrets" / "s3.env"
    for line in env_file.read_text().splitlines():
        key, _, value = line.partition("=")
        if "KEY" in key:
            assert value == policy.PLACEHOLDER, key
    res = _tool(["deploy", "--env", "dev", "--context", "any"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "REPLACE_ME placeholders" in res.stderr


def test_secrets_file_replaces_the_placeholders(tmp_path):
    _render("dev")
    real = tmp_path / "s3.env"
    real.write_text("AWS_ENDPOINT_URL=http://minio.storage:9000\nAWS_ACCESS_KEY_ID=k\n"
                    "AWS_SECRET_ACCESS_KEY=s\nAWS_REGION=eu-west-1\n")
    tokens = tmp_path / "api-tokens.env"
    tokens.write_text(f"read={'r' * 32}\nadmin={'a' * 32},{'b' * 32}\n")
    docs = policy.load_docs(tool.render("dev", real, tokens=tokens))
    assert policy.placeholder_secrets(docs) == []
    assert policy.policy_problems(docs) == []  # the renamed Secret is still referenced
    assert not list((ROOT / "deploy").rglob("s3.env.*")), "real secrets leaked into the tree"
    secret = next(d for d in docs if d["kind"] == "Secret"
                  and d["metadata"]["name"].startswith(catalog.API_TOKENS_SECRET))
    assert base64.b64decode(secret["data"]["admin"]).decode() == f"{'a' * 32},{'b' * 32}"


def test_grpc_servers_get_tokens_and_listen_on_the_pod_and_clients_get_a_read_token(rendered):
    """Every gRPC server reads both token lists from the Secret and binds all interfaces
    (loopback is the default); a workload that calls one of our gRPC APIs sends the read
    token."""
    docs = rendered["prod"]
    secret = next(d["metadata"]["name"] for d in docs if d["kind"] == "Secret"
                  and d["metadata"]["name"].startswith(catalog.API_TOKENS_SECRET))
    for w in catalog.WORKLOADS:
        ctr = _container(docs, w.kind, w.name, w.container_name)
        env = {e["name"]: e for e in ctr.get("env", [])}
        refs = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items()
                if "secretKeyRef" in e.get("valueFrom", {})}
        if w.grpc_port:
            assert env["MAGICLENS_GRPC_HOST"]["value"] == "0.0.0.0", w.name
            assert refs["MAGICLENS_READ_TOKENS"] == {"name": secret, "key": "read"}, w.name
            assert refs["MAGICLENS_ADMIN_TOKENS"] == {"name": secret, "key": "admin"}, w.name
        else:
            assert "MAGICLENS_ADMIN_TOKENS" not in env, w.name
        if w.name in ("gateway", "search-root"):
            assert refs["MAGICLENS_TOKEN"] == {"name": secret, "key": "read"}, w.name
        else:
            assert "MAGICLENS_TOKEN" not in env, w.name


def _tool(args, tmp_path, **env):
    full = dict(os.environ, KUBECONFIG=str(tmp_path / "empty-kubeconfig"), **env)
    (tmp_path / "empty-kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    return subprocess.run([sys.executable, "-m", "deploy.tool", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


def test_unknown_context_is_one_line(tmp_path):
    _render("dev")
    res = _tool(["down", "--env", "dev", "--context", "no-such-cluster"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == ("deploy: kube context 'no-such-cluster' not found in "
                                  f"kubeconfig ({tmp_path / 'empty-kubeconfig'})")


def test_missing_kubectl_is_one_line(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    res = subprocess.run([sys.executable, "-m", "deploy.tool", "render", "--env", "dev"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PATH": str(bare), "KUBECTL": str(bare / "kubectl"),
                              "HOME": str(tmp_path)})
    assert res.returncode == 2
    assert res.stderr.startswith("deploy: kubectl not found") and res.stderr.count("\n") == 1


def test_render_task_writes_the_review_file(tmp_path):
    _render("prod")
    out = tmp_path / "prod.yaml"
    res = _tool(["render", "--env", "prod", "--out", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert policy.load_docs(out.read_text()) and "wrote" in res.stdout


def test_external_postgres_component(tmp_path):
    """An overlay with the component: no CNPG Cluster, DATABASE_URL from a generated Secret,
    database egress to an outside address, and still every check passes."""
    _render("dev")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    k8s = ROOT / "deploy" / "k8s"
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(k8s / 'overlays' / 'dev', overlay)}]\n"
        f"components: [{os.path.relpath(k8s / 'components' / 'external-postgres', overlay)}]\n")
    res = subprocess.run([tool.kubectl_path(), "kustomize", str(overlay)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    docs = policy.load_docs(res.stdout)
    assert not [d for d in docs if d["kind"] == "Cluster"]
    secret = next(d for d in docs if d["kind"] == "Secret"
                  and d["metadata"]["name"].startswith(catalog.PG_SECRET))
    mining = _find(docs, "Deployment", "mining")["spec"]["template"]["spec"]["containers"][0]
    ref = next(e for e in mining["env"] if e["name"] == "DATABASE_URL")["valueFrom"]
    assert ref["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "uri"}
    egress = _find(docs, "NetworkPolicy", "magiclens-allow-postgres")["spec"]["egress"]
    assert egress[0]["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert policy.policy_problems(docs) == [] and policy.custom_resource_problems(docs) == []
    assert f"{secret['metadata']['name']}/uri" in policy.placeholder_secrets(docs)


def test_each_service_is_a_kafka_user_that_may_use_only_its_topics(rendered):
    """Strimzi SCRAM users with simple ACLs (issue 15): a pod may write exactly the topics
    its relay publishes and read exactly the ones it consumes, so e.g. a ModelPublished
    (which moves what the embedding worker serves) can come only from training or the
    outbox relay; each Kafka client sends its own user's password from its Secret."""
    docs = rendered["prod"]
    kafka = _find(docs, "Kafka", catalog.KAFKA_CLUSTER)
    assert [li["authentication"]["type"] for li in kafka["spec"]["kafka"]["listeners"]] == \
        ["scram-sha-512"]
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    users = {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaUser"}
    assert set(users) == {catalog.kafka_user(w) for w in catalog.KAFKA_ACCESS}
    writers: dict[str, set[str]] = {}
    for workload, access in catalog.KAFKA_ACCESS.items():
        acls = users[catalog.kafka_user(workload)]["spec"]["authorization"]["acls"]
        topic_ops = {a["resource"]["name"]: set(a["operations"]) for a in acls
                     if a["resource"]["type"] == "topic"}
        assert {t for t, ops in topic_ops.items() if "Write" in ops} == set(access.writes)
        assert {t for t, ops in topic_ops.items() if "Read" in ops} == set(access.reads)
        assert not any(ops & {"Create", "Delete", "Alter", "All"} for ops in topic_ops.values())
        for t in access.writes:
            writers.setdefault(t, set()).add(workload)
    assert writers[MODELS_PUBLISHED.name] == {"training", "outbox-relay"}
    for w in catalog.WORKLOADS:
        if catalog.KAFKA not in w.uses:
            continue
        container = w.sidecar.name if w.sidecar is not None else w.container_name
        env = {e["name"]: e for e in _container(docs, w.kind, w.name, container)["env"]}
        assert env["KAFKA_SASL_USERNAME"]["value"] == catalog.kafka_user(w.name), w.name
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == \
            {"name": catalog.kafka_user(w.name), "key": "password"}, w.name
        writes = ",".join(catalog.KAFKA_ACCESS[w.name].writes)
        assert env.get("MAGICLENS_OUTBOX_TOPICS", {}).get("value", "") == writes, w.name


def _taskw_deploy(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    kubeconfig = tmp_path / "empty-kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    return subprocess.run([str(ROOT / "taskw"), "deploy", "ENV=dev", "KUBE_CONTEXT=no-such",
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, KUBECONFIG=str(kubeconfig)))


def _deploy_lines(res: subprocess.CompletedProcess) -> list[str]:
    """Our tool's own lines; go-task colours its lines where the environment asks for it."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", res.stderr)
    return [line for line in plain.splitlines() if line.startswith("deploy: ")]


def test_taskw_deploy_refuses_placeholder_secrets_in_one_line(tmp_path):
    """`./taskw deploy` (the design card's `task deploy`) runs deploy:deploy with ENV and
    KUBE_CONTEXT; with placeholder secrets it stops before touching any cluster, in one line."""
    res = _taskw_deploy(tmp_path)
    assert res.returncode != 0
    assert "python -m deploy.tool deploy --env dev --context 'no-such'" in res.stderr
    ours = _deploy_lines(res)
    assert len(ours) == 1 and "REPLACE_ME placeholders" in ours[0], res.stderr[-2000:]


def test_taskw_deploy_names_the_missing_context_in_one_line(tmp_path):
    """With real secrets and tokens passed through SECRETS/TOKENS, the next thing an operator
    can get wrong is the context: one line naming it, and nothing applied."""
    s3 = tmp_path / "s3.env"
    s3.write_text("AWS_ENDPOINT_URL=http://minio.storage:9000\nAWS_ACCESS_KEY_ID=k\n"
                  "AWS_SECRET_ACCESS_KEY=s\nAWS_REGION=eu-west-1\n")
    tokens = tmp_path / "api-tokens.env"
    tokens.write_text(f"read={'r' * 32}\nadmin={'a' * 32}\n")
    res = _taskw_deploy(tmp_path, f"SECRETS={s3}", f"TOKENS={tokens}")
    assert res.returncode != 0
    assert f"--secrets {s3} --tokens {tokens}" in res.stderr
    ours = _deploy_lines(res)
    assert len(ours) == 1 and "'no-such' not found in kubeconfig" in ours[0], res.stderr[-2000:]
