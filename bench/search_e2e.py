"""End-to-end search load: closed-loop gRPC clients against a running suite, and the floor.

    ./taskw up            # after ./taskw demo (a promoted model, indexed shards)
    python bench/search_e2e.py [--clients 1 4 8 16 64] [--seconds 15] [--no-floor]

    # the per-stage budget: start the suite exporting spans to the bench's OTLP receiver
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_EXPORTER_OTLP_INSECURE=true \
        ./taskw up
    python bench/search_e2e.py --trace 4317

Each client is a separate process (its own GIL and channel) that sends `Search` (image
bytes + instruction, k=10) back to back for `--seconds` after a common start; queries are
the corpus's held-out eval queries (their query images read from the corpus site on disk,
their writer and unseen instructions), so instructions repeat as they would across users.
Printed per concurrency: QPS, p50/p95/p99 latency of answered calls, and errors by gRPC code
(a client backs off 100 ms after RESOURCE_EXHAUSTED, the root's refusal under overload).

With `--trace PORT` the bench listens for OTLP/gRPC spans on PORT (tools/otlp_receiver.py)
and prints, per concurrency, the p50/p99 of every stage of the search path (the root's
decode, embed, fan-out, merge and context look-up; Triton's decode, towers and head; each
shard's ScaNN search), so the latency table above comes with where its milliseconds went.

The floor is the same work without the services: the served checkpoint loaded in this
process (decode + preprocess, image tower on the runtime the server uses, text tower, head)
and raw ScaNN over every vector the shards serve, built with the shards' configuration (one
index instead of two), one query at a time, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_queries(corpus: Path, limit: int) -> list[tuple[bytes, str]]:
    """(query image bytes, instruction) from the corpus's eval queries, both wordings."""
    site = corpus / "site"
    out = []
    for line in (corpus / "eval_queries.jsonl").read_text().splitlines():
        q = json.loads(line)
        path = site / q["query_url"].split("/", 3)[3]
        if not path.exists():
            continue
        data = path.read_bytes()
        out.append((data, q["instruction"]))
        if q.get("unseen_instruction"):
            out.append((data, q["unseen_instruction"]))
        if len(out) >= limit:
            break
    if not out:
        raise SystemExit(f"no eval queries with images under {site}: run ./taskw demo first")
    return out


def client(addr: str, queries: list[tuple[bytes, str]], start, seconds: float,
           offset: int, results) -> None:
    """One closed-loop client: (latency ms or None, status code name) per call."""
    import grpc
    from magiclens.v1 import common_pb2, search_pb2, search_pb2_grpc

    from runtime import auth, rpc

    stub = search_pb2_grpc.SearchServiceStub(rpc.channel(addr, role=auth.READ))
    out = []
    start.wait()  # every client started and connected: all begin together
    cpu0 = os.times()  # this client's CPU for the calls only, not its start-up
    end = time.time() + seconds
    i = offset
    while time.time() < end:
        data, instruction = queries[i % len(queries)]
        i += 1
        t0 = time.perf_counter()
        try:
            stub.Search(search_pb2.SearchRequest(
                query=common_pb2.ImageInput(image_bytes=data), instruction=instruction, k=10),
                timeout=30)
            out.append(((time.perf_counter() - t0) * 1000, "OK"))
        except grpc.RpcError as exc:
            out.append(((time.perf_counter() - t0) * 1000, exc.code().name))
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                time.sleep(0.1)  # what a well-behaved client does: back off, then retry
    cpu = os.times()
    results.put((out, cpu.user + cpu.system - cpu0.user - cpu0.system))


def load(addr: str, queries, clients: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    # A barrier, not a start time: spawning 64 clients that each unpickle the queries took
    # longer than any fixed lead, and late clients ran shorter (fewer were concurrent).
    start = ctx.Barrier(clients + 1)
    procs = [ctx.Process(target=client, args=(addr, queries, start, seconds,
                                              (c * 97) % len(queries), results))
             for c in range(clients)]
    for p in procs:
        p.start()
    start.wait(timeout=300)
    cpu_before = cpu_seconds()
    calls = []
    clients_cpu = 0.0
    for _ in procs:
        got, cpu_s = results.get(timeout=seconds + 120)
        calls += got
        clients_cpu += cpu_s
    cpu_after = cpu_seconds()
    for p in procs:
        p.join()
    ok = sorted(ms for ms, code in calls if code == "OK")
    errors = Counter(code for _, code in calls if code != "OK")

    def pct(q: float) -> float:
        return ok[min(len(ok) - 1, int(q * len(ok)))] if ok else float("nan")

    return {"clients": clients, "qps": len(ok) / seconds, "p50": pct(0.5), "p95": pct(0.95),
            "p99": pct(0.99), "calls": len(calls), "errors": dict(errors),
            "cpu_ms_per_call": cpu_per_call(cpu_before, cpu_after, len(ok), clients_cpu)}


# Which processes of the suite a CPU figure belongs to (first match of its command line).
CPU_GROUPS = (("search root", "services.search.root"), ("search shards", "services.search.shard"),
              ("triton: Python model", "services.embedding.server"),
              ("triton: backend stubs", "triton_python_backend_stub"),
              ("triton: server", "tritonserver/bin/tritonserver"),
              ("postgres", "postgres"), ("embedding worker", "services.embedding.worker"))


def cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds so far per group of the suite's processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        group = next((g for g, key in CPU_GROUPS if key in cmd), None)
        if group:
            out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_per_call(before: dict[str, float], after: dict[str, float], calls: int,
                 clients_s: float) -> dict[str, float]:
    """CPU ms per answered call per group, the bench's client processes included."""
    out = {g: (after.get(g, 0.0) - before.get(g, 0.0)) * 1000 / max(1, calls)
           for g in sorted(set(before) | set(after))}
    out["bench clients"] = clients_s * 1000 / max(1, calls)
    out["total"] = sum(out.values())
    return out


def stage_budget(spans) -> dict[str, tuple[float, float, int]]:
    """(p50 ms, p99 ms, count) per `service: span name`, over the spans of complete traces."""
    by_stage: dict[str, list[float]] = {}
    for s in spans:
        by_stage.setdefault(f"{s.service}: {s.name}", []).append(s.ms)
    out = {}
    for name, ms in sorted(by_stage.items()):
        ms.sort()
        out[name] = (ms[len(ms) // 2], ms[min(len(ms) - 1, int(0.99 * len(ms)))], len(ms))
    return out


def print_budget(budgets: dict[int, dict[str, tuple[float, float, int]]]) -> None:
    levels = sorted(budgets)
    stages = sorted({name for b in budgets.values() for name in b},
                    key=lambda n: (not n.startswith("search-root"), n))
    print("\nper-stage latency from the services' spans, p50 / p99 ms (spans per level):")
    print("| stage | " + " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for name in stages:
        cells = []
        for c in levels:
            v = budgets[c].get(name)
            cells.append(f"{v[0]:.1f} / {v[1]:.1f} ({v[2]})" if v else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")


def floor(queries, database_url: str, current_file: Path, n: int) -> dict:
    """In-process: the served model's stages and raw ScaNN, one query at a time."""
    import psycopg

    from runtime.serving import vectors_from_rows
    from services.embedding.model import load_checkpoint
    from services.search.index import IndexParams, ShardIndex

    cur = json.loads(current_file.read_text())
    model = load_checkpoint(cur["checkpoint"], cur["model_version"])
    model.warmup()
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute("SELECT embedding FROM image_embeddings WHERE model_version = %s",
                            (cur["model_version"],)).fetchall()
    pool = vectors_from_rows(rows)
    index = ShardIndex.build(cur["model_version"], np.arange(len(pool)), pool, IndexParams())
    stages: dict[str, list[float]] = {k: [] for k in
                                      ("decode", "image tower", "text tower", "head", "search",
                                       "total")}
    for i in range(n):
        data, instruction = queries[i % len(queries)]
        t0 = time.perf_counter()
        px = model.preprocess_images([data])
        t1 = time.perf_counter()
        fi = model.image_features(px)  # the served runtime (onnxruntime for compact)
        t2 = time.perf_counter()
        model.text_cache = type(model.text_cache)()  # the text tower every time: its cost
        ft = model.text_features([instruction])
        t3 = time.perf_counter()
        q = model.query_from_features(fi, ft)
        t4 = time.perf_counter()
        index.search(q[0], 10)
        t5 = time.perf_counter()
        for k, a, b in (("decode", t0, t1), ("image tower", t1, t2), ("text tower", t2, t3),
                        ("head", t3, t4), ("search", t4, t5), ("total", t0, t5)):
            stages[k].append((b - a) * 1000)
    return {"vectors": len(pool), "index": index.kind,
            **{k: statistics.median(v[3:]) for k, v in stages.items()}}


def main() -> int:
    from runtime import ports

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default=ports.SEARCH_ADDR)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16, 64])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus")
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--floor-queries", type=int, default=60)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--trace", type=int, metavar="PORT",
                    help="receive the services' OTLP spans on this port; print the stages")
    args = ap.parse_args()
    receiver = None
    if args.trace is not None:
        from tools.otlp_receiver import OtlpReceiver

        receiver = OtlpReceiver(args.trace)
        print(f"OTLP receiver on {receiver.endpoint} (the suite must export to it)")
    budgets = {}
    queries = load_queries(args.corpus, args.queries)
    print(f"{len(queries)} queries, {len(set(q for _, q in queries))} distinct instructions; "
          f"{os.cpu_count()} CPUs")
    rows = []
    print("| clients | QPS | p50 ms | p95 ms | p99 ms | calls | errors |")
    print("|---|---|---|---|---|---|---|")
    for c in args.clients:
        if receiver:
            receiver.clear()
        r = load(args.addr, queries, c, args.seconds)
        rows.append(r)
        if receiver:
            time.sleep(6.0)  # exporters batch spans for up to 5 s by default
            budgets[c] = stage_budget(receiver.snapshot())
        errs = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        print(f"| {c} | {r['qps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} "
              f"| {r['calls']} | {errs} |", flush=True)
    print("\nCPU ms per answered call, by process group (user + system, /proc):")
    groups = list(rows[0]["cpu_ms_per_call"]) if rows else []
    print("| process | " + " | ".join(f"{r['clients']} cl." for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for g in groups:
        print(f"| {g} | " + " | ".join(f"{r['cpu_ms_per_call'].get(g, 0.0):.1f}" for r in rows)
              + " |")
    result: dict = {"load": rows}
    if receiver:
        receiver.close()
        if not any(budgets.values()):
            print(f"\nno spans arrived: start the suite with OTEL_EXPORTER_OTLP_ENDPOINT="
                  f"{receiver.endpoint} OTEL_EXPORTER_OTLP_INSECURE=true")
        else:
            print_budget(budgets)
        result["stages"] = {c: b for c, b in budgets.items()}
    if not args.no_floor:
        from runtime.config import BaseServiceSettings, load_settings

        settings = load_settings(BaseServiceSettings)
        f = floor(queries, settings.database_url,
                  ROOT / "data" / "serving" / "current_model.json", args.floor_queries)
        result["floor"] = f
        print(f"\nfloor (in-process, one query at a time, {f['vectors']} vectors, ScaNN "
              f"{f['index']}, median ms):")
        stages = {k: v for k, v in f.items() if k not in ("vectors", "index")}
        print("| " + " | ".join(stages) + " |")
        print("|" + "---|" * len(stages))
        print("| " + " | ".join(f"{v:.1f}" for v in stages.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
