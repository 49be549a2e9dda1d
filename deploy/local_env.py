"""Each dev-overlay workload's environment, resolved for running it as a local process.

Why: the dev overlay is the contract (names, ports, variables). Running the services locally
with exactly the variables and arguments their pods get tests that contract without a
cluster. Everything comes from the rendered manifests (ConfigMap and Secret references
resolved); the only changes are the ones in this table, applied by `Localizer` to every
value and argument alike, whatever the variable is called — so a misnamed variable stays
misnamed locally, and the service falls back to its default, as it would in the pod:

  in the manifests                          locally
  Secret magiclens-pg-app, key uri          the local PostgreSQL URL
  Secret magiclens-s3 (envFrom: AWS_*)      not set: no object store locally
  Secret magiclens-api-tokens, read/admin   the local token file's (runtime/auth.py)
  KafkaUser Secret <user>, key password     unused: the local broker has no users
  KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT    PLAINTEXT (Tansu on one machine)
  s3://bucket/prefix                        file://<data>/s3/bucket/prefix (one store for all)
  magiclens-kafka-kafka-bootstrap:9092      the local Tansu bootstrap
  <service>[.<ns>[.svc.cluster.local]]:P    127.0.0.1:<local port of that workload's port P>
  <pod>.<headless service>[...]:P (shards)  127.0.0.1:<local port of that pod's port P>
  127.0.0.1:P / localhost:P inside a pod    127.0.0.1:<local port of the same pod's port P>
  *_PORT=P, --*-port P (P a containerPort)  the local port of the pod's port P (listen there)
  0.0.0.0 (listen on all pod interfaces)    127.0.0.1
  /data, /data/... (the pod's data volume)  <data>/pods/<pod>, <data>/pods/<pod>/...
  fieldRef to the pod-index label           the replica number

Local ports: `runtime_ports` by default (docs/runtime.md: each pod's own ports, StatefulSet
replica i at port + i, so shard i on 50060+i); tests pass free ports instead. Each process
also gets a minimal base environment like the image's (`base_env`): PATH, HOME, locale,
PYTHONPATH=<repo>:<repo>/gen — nothing else from the caller's environment.

    python -m deploy.local_env                      # JSON {process: {"command", "env"}}
    python -m deploy.local_env --workload mining    # `export K=V` lines for one process
    python -m deploy.local_env --procfile > Procfile.dev && honcho start -f Procfile.dev
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy import catalog, gen_base, policy, tool
from runtime import auth
from runtime.config import project_root
from runtime.ports import local_database_url, local_kafka_bootstrap

# What the pods' image sets and a local process needs the same of (deploy/Dockerfile).
IMAGE_ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER")


@dataclass(frozen=True)
class Pod:
    name: str  # Deployment: the workload name; StatefulSet replica i: <name>-<i>
    workload: str
    replica: int
    ports: frozenset[int]  # every containerPort of the pod (its containers share localhost)


# (pod, in-cluster port) -> local port
PortMap = Callable[[Pod, int], int]


@dataclass(frozen=True)
class LocalProcess:
    name: str  # the pod name; a container name for pods with several containers
    pod: str
    command: list[str]
    env: dict[str, str]

    def popen_env(self) -> dict[str, str]:
        """The full environment to start it with: `base_env()` + the mapped manifest env."""
        return {**base_env(), **self.env}


def base_env() -> dict[str, str]:
    """The image's own environment (PATH, HOME, PYTHONPATH, unbuffered output), locally."""
    root = project_root()
    env = {k: os.environ[k] for k in IMAGE_ENV_PASSTHROUGH if k in os.environ}
    env.update(PYTHONPATH=f"{root}:{root / 'gen'}", PYTHONUNBUFFERED="1")
    return env


def runtime_ports(pod: Pod, port: int) -> int:
    """docs/runtime.md's local ports: the pod's own, StatefulSet replica i at port + i."""
    return port + pod.replica


class Localizer:
    """The mapping in the module docstring, for one rendered overlay."""

    def __init__(self, docs: list[policy.Doc], *, data_dir: Path, database_url: str,
                 kafka_bootstrap: str, ports: PortMap = runtime_ports
                 ) -> None:
        self.data_dir, self.kafka_bootstrap = data_dir, kafka_bootstrap
        self.secrets = {(catalog.PG_SECRET, "uri"): database_url}
        # The API tokens: this checkout's local token file (what the CLI and tests send).
        local_tokens = auth.local_tokens()
        self.secrets.update({(catalog.API_TOKENS_SECRET, role): ",".join(local_tokens[role])
                             for role in auth.ROLES})
        self.secrets.update({(catalog.kafka_user(w), "password"): "unused-locally"
                             for w in catalog.KAFKA_ACCESS})
        self.no_local_store = {catalog.S3_SECRET}  # envFrom: these Secrets are not set
        self._ports = ports
        self.namespace = next((d["metadata"].get("namespace", "") for d in docs
                               if d.get("kind") in policy.WORKLOAD_KINDS), "")
        self.pods: dict[str, Pod] = {}
        named: dict[str, dict[str, int]] = {}  # workload -> {port name: containerPort}
        for d in docs:
            if d.get("kind") in policy.WORKLOAD_KINDS:
                name = d["metadata"]["name"]
                cports = [p for c in d["spec"]["template"]["spec"]["containers"]
                          for p in c.get("ports", [])]
                named[name] = {p["name"]: p["containerPort"] for p in cports if "name" in p}
                ports = frozenset(p["containerPort"] for p in cports)
                if d["kind"] == "StatefulSet":
                    for i in range(d["spec"].get("replicas", 1)):
                        self.pods[f"{name}-{i}"] = Pod(f"{name}-{i}", name, i, ports)
                else:
                    self.pods[name] = Pod(name, name, 0, ports)
        # ClusterIP Service -> (workload, {service port: containerPort}); headless Services
        # name StatefulSet pods (<pod>.<service>), whose own ports are addressed directly.
        self.services: dict[str, tuple[str, dict[int, int]]] = {}
        self.headless: set[str] = set()
        for d in docs:
            if d.get("kind") != "Service":
                continue
            target = d["spec"].get("selector", {}).get(gen_base.APP_LABEL, "")
            if d["spec"].get("clusterIP") == "None":
                self.headless.add(d["metadata"]["name"])
            elif target in self.pods:
                self.services[d["metadata"]["name"]] = (target, {
                    p["port"]: named[target].get(p.get("targetPort"), p.get("targetPort",
                                                                             p["port"]))
                    for p in d["spec"].get("ports", [])})

    def port(self, pod: str, port: int) -> int:
        return self._ports(self.pods[pod], port)

    def pod_dir(self, pod: str) -> Path:
        return self.data_dir / "pods" / pod

    def blob_uri(self, s3_uri: str) -> str:
        return f"file://{self.data_dir / 's3' / s3_uri.removeprefix('s3://')}"

    def _dns_suffix_ok(self, labels: list[str]) -> bool:
        full = [self.namespace, "svc", "cluster", "local"]
        return labels == full[:len(labels)]

    def address(self, part: str, pod: Pod) -> str:
        m = re.fullmatch(r"([A-Za-z0-9.-]+):(\d+)", part)
        if not m:
            return part
        host, port = m.group(1).lower(), int(m.group(2))
        labels = host.split(".")
        if host in ("127.0.0.1", "localhost") and port in pod.ports:
            return f"127.0.0.1:{self._ports(pod, port)}"
        if f"{labels[0]}:{port}" == catalog.KAFKA_BOOTSTRAP and self._dns_suffix_ok(labels[1:]):
            return self.kafka_bootstrap
        if labels[0] in self.services and self._dns_suffix_ok(labels[1:]):
            workload, via = self.services[labels[0]]
            target, cport = self.pods[workload], via.get(port)
            if cport in target.ports:
                return f"127.0.0.1:{self._ports(target, cport)}"
        if (len(labels) > 1 and labels[1] in self.headless and labels[0] in self.pods
                and self._dns_suffix_ok(labels[2:])):
            target = self.pods[labels[0]]
            if port in target.ports:
                return f"127.0.0.1:{self._ports(target, port)}"
        return part  # not ours: left as the manifest says (and fails locally as it would)

    def value(self, key: str, value: str, pod: Pod) -> str:
        """One env value (key = variable name) or argument (key = the preceding flag)."""
        if value == "0.0.0.0":
            return "127.0.0.1"
        if key == "KAFKA_SECURITY_PROTOCOL" and value.startswith("SASL_"):
            return "PLAINTEXT"
        if value == "/data" or value.startswith("/data/"):
            return str(self.pod_dir(pod.name)) + value[len("/data"):]
        if value.startswith("s3://"):
            return self.blob_uri(value)
        if (key.endswith(("_PORT", "-port")) and value.isdigit()
                and int(value) in pod.ports):
            return str(self._ports(pod, int(value)))
        return ",".join(self.address(part, pod) for part in value.split(","))

    def secret(self, name: str, key: str, where: str) -> str:
        try:
            return self.secrets[(name, key)]
        except KeyError:
            raise ValueError(f"{where}: no local value for Secret {name} key {key}") from None


def _secret_base_name(name: str, docs_secrets: set[str]) -> str:
    """`magiclens-s3-277h2c9fm8` (kustomize hash suffix) -> `magiclens-s3`."""
    if name in docs_secrets:
        return re.sub(r"-[a-z0-9]{10}$", "", name)
    return name


def _container_env(ctr: policy.Doc, pod: Pod, loc: Localizer,
                   config: dict[str, dict[str, str]], secrets: set[str]) -> dict[str, str]:
    """The container's variables: manifest values mapped, Secrets replaced by local values."""
    where = f"{pod.name}/{ctr['name']}"
    env: dict[str, str] = {}
    for ref in ctr.get("envFrom", []):
        if "configMapRef" in ref:
            env.update({k: loc.value(k, v, pod)
                        for k, v in config[ref["configMapRef"]["name"]].items()})
        elif ("secretRef" in ref and _secret_base_name(ref["secretRef"]["name"], secrets)
              not in loc.no_local_store):
            raise ValueError(f"{where}: no local values for Secret "
                             f"{ref['secretRef']['name']}")
    for e in ctr.get("env", []):
        src = e.get("valueFrom", {})
        if "value" in e:
            env[e["name"]] = loc.value(e["name"], e["value"], pod)
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            env[e["name"]] = loc.value(e["name"], config[ref["name"]][ref["key"]], pod)
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            env[e["name"]] = loc.secret(_secret_base_name(ref["name"], secrets), ref["key"],
                                        where)
        elif "fieldRef" in src and "pod-index" in src["fieldRef"]["fieldPath"]:
            env[e["name"]] = str(pod.replica)
        else:
            raise ValueError(f"{where}: cannot resolve env {e['name']}")
    return env


def _command(ctr: policy.Doc, pod: Pod, loc: Localizer) -> list[str]:
    argv = [*ctr["command"], *ctr.get("args", [])]
    out = [_interpreter(ctr["image"]) if argv[0] == "python" else argv[0]]
    for i, arg in enumerate(argv[1:], start=1):
        out.append(loc.value(argv[i - 1], arg, pod))
    return out


def _interpreter(image: str) -> str:
    """The local environment matching the image: Triton's own venv, else the main one."""
    if image.split(":")[0].startswith(catalog.TRITON_IMAGE):
        return str(project_root() / ".venv-triton" / "bin" / "python")
    return sys.executable


def processes(env_name: str = "dev", *, database_url: str | None = None,
              kafka_bootstrap: str | None = None, data_dir: Path | None = None,
              text: str | None = None, ports: PortMap = runtime_ports
              ) -> list[LocalProcess]:
    return localized(env_name, database_url=database_url, kafka_bootstrap=kafka_bootstrap,
                     data_dir=data_dir, text=text, ports=ports)[1]


def localized(env_name: str = "dev", *, database_url: str | None = None,
              kafka_bootstrap: str | None = None, data_dir: Path | None = None,
              text: str | None = None, ports: PortMap = runtime_ports
              ) -> tuple[Localizer, list[LocalProcess]]:
    """The mapping and every container of every workload as a local process."""
    docs = policy.load_docs(text if text is not None else tool.render(env_name))
    config = {d["metadata"]["name"]: d.get("data") or {} for d in docs
              if d.get("kind") == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in docs if d.get("kind") == "Secret"}
    loc = Localizer(docs, data_dir=data_dir or project_root() / "data" / "local-dev",
                    database_url=database_url or local_database_url(),
                    kafka_bootstrap=kafka_bootstrap or local_kafka_bootstrap(),
                    ports=ports)
    out: list[LocalProcess] = []
    for d in docs:
        if d.get("kind") not in policy.WORKLOAD_KINDS:
            continue
        containers = d["spec"]["template"]["spec"]["containers"]
        pods = [p for p in loc.pods.values() if p.workload == d["metadata"]["name"]]
        for pod in pods:
            for ctr in containers:
                name = ctr["name"] if len(containers) > 1 else pod.name
                out.append(LocalProcess(name, pod.name, _command(ctr, pod, loc),
                                        _container_env(ctr, pod, loc, config, secrets)))
    return loc, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="dev")
    ap.add_argument("--workload", help="print `export` lines for this one process")
    ap.add_argument("--procfile", action="store_true", help="honcho/foreman Procfile lines")
    args = ap.parse_args(argv)
    try:
        procs = processes(args.env)
    except tool.ToolError as exc:
        print(f"local_env: {exc}", file=sys.stderr)
        return 2
    if args.workload:
        match = [p for p in procs if p.name == args.workload]
        if not match:
            print(f"local_env: no workload {args.workload!r} (have "
                  f"{', '.join(p.name for p in procs)})", file=sys.stderr)
            return 2
        for k, v in sorted(match[0].env.items()):
            print(f"export {k}={shlex.quote(v)}")
        return 0
    if args.procfile:
        for p in procs:  # env -i: the process sees nothing of the caller's environment
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(p.popen_env().items()))
            print(f"{p.name}: env -i {env} {shlex.join(p.command)}")
        return 0
    json.dump({p.name: {"command": p.command, "env": p.env} for p in procs}, sys.stdout,
              indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
