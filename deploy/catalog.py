"""The workload table: one row per process kind the suite runs on a cluster.

This is the single place that names each workload's entry point, resource needs and the
calls it makes; its ports come from runtime/ports.py (the table docs/runtime.md shows).
deploy/gen_base.py turns it into the kustomize base; deploy/smoke.py reads it to know which
health endpoints to probe. Changing a port (in runtime/ports.py) or a call here and re-running
`python -m deploy.gen_base` keeps Service, probes and NetworkPolicies consistent with each
other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime import ports
from runtime.topics import (
    ALL_TOPICS,
    EMBEDDINGS_READY,
    IMAGES_DELETED,
    IMAGES_MINED,
    MODELS_PUBLISHED,
    PAGES_DISCOVERED,
    PAIRS_MINED,
    TRIPLES_CREATED,
)

REGISTRY = "ghcr.io/magiclens"
SERVICE_IMAGE = f"{REGISTRY}/magiclens-service"  # Dockerfile target `service` (env/main.lock)
TRITON_IMAGE = f"{REGISTRY}/magiclens-embedding-triton"  # target `embedding-triton`
# Where the embedding worker tells its pod's Triton server which model version to serve.
CURRENT_MODEL_FILE = "/data/embedding/current.json"
IMAGE_TAG = "0.1.0"  # overlays pin the released tag with kustomize `images:`

KAFKA_CLUSTER = "magiclens-kafka"  # Strimzi Kafka CR; bootstrap Service below
KAFKA_BOOTSTRAP = f"{KAFKA_CLUSTER}-kafka-bootstrap:9092"
PG_CLUSTER = "magiclens-pg"  # CloudNativePG Cluster CR; its app Secret is `<name>-app`
PG_SECRET = f"{PG_CLUSTER}-app"
S3_SECRET = "magiclens-s3"
# The gRPC API tokens (runtime/auth.py): key `read` and key `admin`, each a comma-separated
# list (several during a rotation); clients inside the cluster send the first read token.
API_TOKENS_SECRET = "magiclens-api-tokens"
CONFIG_MAP = "magiclens-config"
MONITORING_NAMESPACE = "monitoring"  # where Prometheus runs (scrapes metrics ports)

# Capabilities a workload may need outside the service mesh of our own pods.
POSTGRES, KAFKA, S3, INTERNET = "postgres", "kafka", "s3", "internet"


@dataclass(frozen=True)
class Sidecar:
    """A second container in the pod, sharing its volumes (e.g. /data) and localhost."""

    name: str
    module: str
    image: str = SERVICE_IMAGE
    requests: tuple[str, str] = ("250m", "512Mi")
    limits: tuple[str, str] = ("1", "2Gi")
    env: tuple[tuple[str, str], ...] = ()
    metrics_port: int | None = None  # its own /metrics (a container port named worker-metrics)


@dataclass(frozen=True)
class Workload:
    name: str
    module: str  # `python -m <module>`
    image: str = SERVICE_IMAGE
    kind: str = "Deployment"
    grpc_port: int | None = None  # standard gRPC health service: probes use it
    metrics_port: int | None = None
    http_port: int | None = None  # HTTP-only workloads (gateway) probe HTTP
    http_health_path: str = "/healthz"
    extra_ports: tuple[tuple[str, int], ...] = ()
    uses: frozenset[str] = frozenset()
    calls: tuple[tuple[str, int], ...] = ()  # (workload, port) it opens connections to
    public: bool = False  # reachable from outside the namespace (Ingress)
    requests: tuple[str, str] = ("100m", "256Mi")
    limits: tuple[str, str] = ("500m", "512Mi")
    migrate: bool = True  # init container applies the schema first (idempotent, locked)
    keda: tuple[str, str] | None = None  # (consumer group, topic) for lag scaling
    startup_s: int = 60  # how long the first health check may take
    data_volume_gi: int = 2  # emptyDir under MAGICLENS_DATA_DIR (PVC for StatefulSets)
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    container: str = ""  # main container name (default: the workload name)
    sidecar: Sidecar | None = None
    # app.kubernetes.io/component: its role in the architecture (docs/operations.md).
    component: str = ""

    @property
    def container_name(self) -> str:
        return self.container or self.name

    @property
    def probe_port(self) -> int | None:
        return self.grpc_port or self.http_port


WORKLOADS: tuple[Workload, ...] = (
    Workload("mining", "services.mining", grpc_port=ports.MINING.grpc,
             metrics_port=ports.MINING.metrics,
             uses=frozenset({POSTGRES, KAFKA, S3, INTERNET}),
             requests=("500m", "1Gi"), limits=("2", "2Gi"),
             keda=("magiclens-mining", "magiclens.pages.discovered.v1"), component="crawler"),
    Workload("triplegen", "services.triplegen", grpc_port=ports.TRIPLEGEN.grpc,
             metrics_port=ports.TRIPLEGEN.metrics,
             uses=frozenset({POSTGRES, KAFKA, S3}),
             requests=("500m", "1Gi"), limits=("2", "4Gi"),
             keda=("magiclens-triplegen", "magiclens.pairs.mined.v1"), component="annotator"),
    Workload("training", "services.training", grpc_port=ports.TRAINING.grpc,
             metrics_port=ports.TRAINING.metrics,
             uses=frozenset({POSTGRES, KAFKA, S3}),
             requests=("2", "8Gi"), limits=("8", "32Gi"), data_volume_gi=50, startup_s=120,
             component="trainer"),
    # One pod per Triton replica: the Triton server (PyTriton, own image from env/triton.lock;
    # HTTP 8000 health, gRPC 8001 inference, metrics 8002) and, beside it, the embedding worker
    # (main env) that consumes events and writes the pod's current-model file on /data.
    Workload("embedding", "services.embedding.server", image=TRITON_IMAGE,
             container="embedding-server",
             # Listen ports stated, not left to the server's defaults: they are the ports
             # the Service and the probes name (and what a local run moves).
             args=("--current-file", CURRENT_MODEL_FILE, "--http-port", str(ports.TRITON.http),
                   "--grpc-port", str(ports.TRITON.grpc),
                   "--metrics-port", str(ports.TRITON.metrics)),
             env={"MAGICLENS_TRITON_HOST": "0.0.0.0"},
             http_port=ports.TRITON.http, http_health_path="/v2/health/ready",
             metrics_port=ports.TRITON.metrics, extra_ports=(("triton-grpc", ports.TRITON.grpc),),
             uses=frozenset({POSTGRES, KAFKA, S3}),
             requests=("2", "6Gi"), limits=("4", "12Gi"), startup_s=300, data_volume_gi=10,
             component="encoder",
             sidecar=Sidecar("embedding-worker", "services.embedding.worker",
                             metrics_port=ports.EMBEDDING_WORKER.metrics,
                             # The same file the server beside it watches (its default
                             # is <data>/serving/current_model.json: the server would wait
                             # for a model forever).
                             env=(("MAGICLENS_TRITON_URL", ports.TRITON_ADDR),
                                  ("MAGICLENS_CURRENT_MODEL_FILE", CURRENT_MODEL_FILE),
                                  ("MAGICLENS_GRPC_HOST", "0.0.0.0"),
                                  ("MAGICLENS_METRICS_PORT",
                                   str(ports.EMBEDDING_WORKER.metrics))))),
    Workload("search-shard", "services.search.shard", kind="StatefulSet",
             grpc_port=ports.SEARCH_SHARD.grpc, metrics_port=ports.SEARCH_SHARD.metrics,
             uses=frozenset({POSTGRES, KAFKA, S3}),
             requests=("1", "4Gi"), limits=("2", "8Gi"), startup_s=600, data_volume_gi=20,
             component="search-shard"),
    Workload("search-root", "services.search.root", grpc_port=ports.SEARCH_ROOT.grpc,
             metrics_port=ports.SEARCH_ROOT.metrics,
             uses=frozenset({POSTGRES}),
             calls=(("search-shard", ports.SEARCH_SHARD.grpc), ("embedding", ports.TRITON.grpc)),
             requests=("250m", "512Mi"), limits=("1", "1Gi"), component="search-api"),
    Workload("gateway", "services.gateway", http_port=ports.GATEWAY.http,
             http_health_path="/api/health",
             public=True, uses=frozenset({POSTGRES, S3}),
             calls=(("search-root", ports.SEARCH_ROOT.grpc),),
             env={"MAGICLENS_GATEWAY_HOST": "0.0.0.0",
                  "MAGICLENS_GATEWAY_PORT": str(ports.GATEWAY.http)},
             requests=("100m", "256Mi"), limits=("500m", "512Mi"), migrate=False,
             component="frontend"),
    # No gRPC or health endpoint of its own, only /metrics: see deploy/README.md.
    Workload("outbox-relay", "services.outbox_relay", uses=frozenset({POSTGRES, KAFKA}),
             metrics_port=ports.OUTBOX_RELAY.metrics, env={"MAGICLENS_GRPC_HOST": "0.0.0.0"},
             component="relay"),
)

BY_NAME = {w.name: w for w in WORKLOADS}


@dataclass(frozen=True)
class KafkaAccess:
    """What one workload's Kafka user may do (Strimzi KafkaUser, SCRAM-SHA-512, simple ACLs):
    write the topics its outbox relay publishes (MAGICLENS_OUTBOX_TOPICS says the same to
    the relay), read the topics it consumes, in consumer groups starting with `group`."""

    writes: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    group: str = ""  # a prefix of its consumer group ids ("": it consumes nothing)


def _names(*topics) -> tuple[str, ...]:
    return tuple(t.name for t in topics)


# Each service may produce and consume only its own topics. A forged ModelPublished (the
# event the embedding worker acts on) can then come only from training or the outbox relay.
KAFKA_ACCESS: dict[str, KafkaAccess] = {
    "mining": KafkaAccess(_names(PAGES_DISCOVERED, IMAGES_MINED, PAIRS_MINED, IMAGES_DELETED),
                          _names(PAGES_DISCOVERED), "magiclens-mining"),
    "triplegen": KafkaAccess(_names(PAIRS_MINED, TRIPLES_CREATED),
                             _names(IMAGES_MINED, PAIRS_MINED), "magiclens-triplegen"),
    "training": KafkaAccess(_names(MODELS_PUBLISHED), _names(TRIPLES_CREATED),
                            "magiclens-training"),
    "embedding": KafkaAccess(_names(EMBEDDINGS_READY), _names(IMAGES_MINED, MODELS_PUBLISHED),
                             "magiclens-embedding-worker"),
    "search-shard": KafkaAccess((), _names(EMBEDDINGS_READY, MODELS_PUBLISHED, IMAGES_DELETED),
                                "magiclens-search-shard-"),
    # The extra relay publishes any service's outbox rows.
    "outbox-relay": KafkaAccess(_names(*ALL_TOPICS)),
    # Not a workload: the user for producers outside the suite (kcat, a crawler), which may
    # only announce page URLs (the JSON path; docs/topics.md).
    "ingest": KafkaAccess(_names(PAGES_DISCOVERED)),
}


def kafka_user(workload: str) -> str:
    """The KafkaUser (and the Secret Strimzi makes for it, key `password`) of a workload."""
    return f"magiclens-{workload}"


def callers_of(name: str) -> list[tuple[str, int]]:
    """Workloads that call `name`, with the port they call."""
    return [(w.name, port) for w in WORKLOADS for callee, port in w.calls if callee == name]
