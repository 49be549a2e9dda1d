"""Each dev-overlay workload's environment, resolved for running it as a local process.

Why: the dev overlay is the contract (names, ports, variables). Running the services locally
with exactly the variables their pods get — ConfigMap values resolved, Secrets replaced by the
local infrastructure's defaults, cluster DNS names mapped to 127.0.0.1 — tests that contract
without a cluster. Local ports follow docs/runtime.md (shard i on 50060+i, metrics 9160+i).

    python -m deploy.local_env                      # JSON {workload: {"command", "env"}}
    python -m deploy.local_env --workload mining    # `export K=V` lines for one workload
    python -m deploy.local_env --procfile > Procfile.dev && honcho start -f Procfile.dev
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from deploy import catalog, policy, tool
from services.runtime import infra

# The placeholders in the S3 Secret are not credentials for anything local.
DROPPED_SECRET_KEYS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                       "AWS_REGION"}
SHARD_PORT_BASE, SHARD_METRICS_BASE = 50060, 9160


@dataclass(frozen=True)
class LocalProcess:
    name: str  # workload name; StatefulSet replicas become <name>-<i>
    command: list[str]
    env: dict[str, str]


def _interpreter(image: str) -> str:
    """The local environment matching the image: Triton's own venv, else the main one."""
    if image.split(":")[0].startswith(catalog.TRITON_IMAGE):
        return str(infra.project_root() / ".venv-triton" / "bin" / "python")
    return sys.executable


def _local_overrides(data_dir: Path, database_url: str, kafka: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": kafka,
            "MAGICLENS_DATA_DIR": str(data_dir),
            # No object store locally: the file blob store under the data directory.
            "MAGICLENS_BLOB_URI": f"file://{data_dir / 'blobs'}"}


def _localize_address(value: str, services: set[str]) -> str:
    """`search-root:50055` -> `127.0.0.1:50055`; shard i (pod search-shard-i) -> 50060+i.

    Comma-separated lists (MAGICLENS_SHARDS) are mapped entry by entry."""
    out = []
    for part in value.split(","):
        m = re.fullmatch(r"([a-z0-9-]+?)(?:-(\d+))?(\.[a-z0-9.-]+)?:(\d+)", part)
        if m and m.group(1) == "search-shard" and m.group(2) is not None:
            out.append(f"127.0.0.1:{SHARD_PORT_BASE + int(m.group(2))}")
        elif m and m.group(1) in services and m.group(2) is None:
            out.append(f"127.0.0.1:{m.group(4)}")
        else:
            out.append(part)
    return ",".join(out)


def _container_processes(d: policy.Doc, ctr: policy.Doc, by_container: bool,
                         config: dict[str, dict[str, str]], services: set[str],
                         overrides: dict[str, str]) -> list[LocalProcess]:
    out: list[LocalProcess] = []
    base: dict[str, str] = {}
    for ref in ctr.get("envFrom", []):
        if "configMapRef" in ref:
            base.update(config[ref["configMapRef"]["name"]])
    replicas = d["spec"].get("replicas", 1) if d["kind"] == "StatefulSet" else 1
    for i in range(replicas):
        env = dict(base)
        for e in ctr.get("env", []):
            src = e.get("valueFrom", {})
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                env[e["name"]] = config[ref["name"]][ref["key"]]
            elif "secretKeyRef" in src:
                env[e["name"]] = ""  # resolved from the local overrides below
            elif "fieldRef" in src and "pod-index" in src["fieldRef"]["fieldPath"]:
                env[e["name"]] = str(i)
            else:
                raise ValueError(f"{d['metadata']['name']}: cannot resolve env {e['name']}")
        for k in DROPPED_SECRET_KEYS:
            env.pop(k, None)
        env.update({k: v for k, v in overrides.items() if k in env or k in base
                    or k == "MAGICLENS_BLOB_URI"})
        env = {k: _localize_address(v, services) for k, v in env.items()}
        # Pods listen on all interfaces; a local process stays on loopback.
        env = {k: "127.0.0.1" if k.endswith("_HOST") and v == "0.0.0.0" else v
               for k, v in env.items()}
        name = ctr["name"] if by_container else d["metadata"]["name"]
        if d["kind"] == "StatefulSet":
            env["MAGICLENS_GRPC_PORT"] = str(SHARD_PORT_BASE + i)
            env["MAGICLENS_METRICS_PORT"] = str(SHARD_METRICS_BASE + i)
            name = f"{name}-{i}"
        missing = [k for k, v in env.items() if v == ""]
        if missing:
            raise ValueError(f"{name}: no local value for {', '.join(missing)}")
        command = [_interpreter(ctr["image"]) if ctr["command"][0] == "python"
                   else ctr["command"][0], *ctr["command"][1:]]
        if "--current-file" in command:  # the pod's shared /data -> the local data dir
            j = command.index("--current-file") + 1
            command[j] = command[j].replace("/data", overrides["MAGICLENS_DATA_DIR"], 1)
        out.append(LocalProcess(name, command, env))
    return out


def processes(env_name: str = "dev", *, database_url: str | None = None,
              kafka_bootstrap: str | None = None, data_dir: Path | None = None,
              text: str | None = None) -> list[LocalProcess]:
    docs = policy.load_docs(text if text is not None else tool.render(env_name))
    config = {d["metadata"]["name"]: d.get("data") or {} for d in docs
              if d.get("kind") == "ConfigMap"}
    services = {d["metadata"]["name"] for d in docs if d.get("kind") == "Service"}
    overrides = _local_overrides(data_dir or infra.project_root() / "data",
                                 database_url or infra.local_database_url(),
                                 kafka_bootstrap or infra.local_kafka_bootstrap())
    out: list[LocalProcess] = []
    for d in docs:
        if d.get("kind") not in policy.WORKLOAD_KINDS:
            continue
        containers = d["spec"]["template"]["spec"]["containers"]
        for ctr in containers:
            out += _container_processes(d, ctr, len(containers) > 1, config, services,
                                        overrides)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="dev")
    ap.add_argument("--workload", help="print `export` lines for this one workload")
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
        for p in procs:
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(p.env.items()))
            print(f"{p.name}: env {env} {shlex.join(p.command)}")
        return 0
    json.dump({p.name: {"command": p.command, "env": p.env} for p in procs}, sys.stdout,
              indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
