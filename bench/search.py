"""Search benchmark: synthetic clustered 512-d unit vectors split over 2 ScaNN shards served by
the real ShardService over gRPC (fan-out + merge as the root does), against raw ScaNN
in-process, FAISS (IVF-Flat) and hnswlib at matched recall@10 vs brute force.

    python bench/search.py [--n 100000] [--queries 300] [--million]
    python bench/search.py --threshold-sweep [--sizes 1000 5000 10000 20000 ...] [--budget-ms 0.5]

`--million` adds 1M vectors (~8 GB peak: vectors are generated in float32 chunks and each
system is built, measured and freed before the next). `--threshold-sweep` times the shard's
brute-force searcher against its tree + AH + reorder searcher (the exact `build_searcher`
configs, searched through `ShardIndex.search`) at each per-shard pool size, interleaved in
the same run, and prints the crossover that `DEFAULT_BRUTE_THRESHOLD` is set from.

FAISS/hnswlib are optional (bench-only; pinned in env/main.lock); missing ones are reported
as not installed.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import numpy as np
from magiclens.v1 import search_pb2, search_pb2_grpc

from runtime import rpc
from runtime.grpc_server import GrpcServer
from services.search.batcher import QueryBatcher
from services.search.index import IndexParams, Query, ShardIndex
from services.search.shard import ShardServicer

CHUNK = 100_000
CLIENTS = (8,)  # concurrent clients of the gRPC and in-process concurrent rows


def clustered(n: int, d: int, clusters: int, rng) -> np.ndarray:
    """n unit vectors around `clusters` Gaussian centres, built in float32 chunks."""
    centers = rng.standard_normal((clusters, d), dtype=np.float32)
    x = np.empty((n, d), np.float32)
    for a in range(0, n, CHUNK):
        m = min(CHUNK, n - a)
        c = centers[rng.integers(clusters, size=m)]
        c += 0.35 * rng.standard_normal((m, d), dtype=np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        x[a:a + m] = c
    return x


def exact_topk(db: np.ndarray, qs: np.ndarray, k: int) -> np.ndarray:
    """Brute-force top-k ids by dot product, over db in chunks (no [nq, n] int64 argsort)."""
    best_s = np.full((len(qs), 0), -np.inf, np.float32)
    best_i = np.zeros((len(qs), 0), np.int64)
    for a in range(0, len(db), CHUNK):
        s = np.concatenate([best_s, qs @ db[a:a + CHUNK].T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(
            np.arange(a, min(a + CHUNK, len(db))), (len(qs), min(CHUNK, len(db) - a)))], axis=1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def recall(got: list[list[int]], exact: np.ndarray) -> float:
    pairs = zip(got, exact, strict=True)
    return float(np.mean([len(set(g) & set(e.tolist())) / len(e) for g, e in pairs]))


def timed(fn, queries) -> tuple[list, np.ndarray, float]:
    lat, out = [], []
    t0 = time.perf_counter()
    for q in queries:
        s = time.perf_counter()
        out.append(fn(q))
        lat.append(time.perf_counter() - s)
    return out, np.array(lat), len(queries) / (time.perf_counter() - t0)


def concurrent(fn, queries, clients: int) -> tuple[list, np.ndarray, float]:
    """`timed` with `clients` threads, each sending its share of the queries back to back."""
    from concurrent.futures import ThreadPoolExecutor

    shares = [list(range(c, len(queries), clients)) for c in range(clients)]
    out: list = [None] * len(queries)
    lat = np.zeros(len(queries))

    def work(share: list[int]) -> None:
        for i in share:
            s = time.perf_counter()
            out[i] = fn(queries[i])
            lat[i] = time.perf_counter() - s

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, shares))
    return out, lat, len(queries) / (time.perf_counter() - t0)


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e6
    return 0.0


def peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return 0.0


class _FakeShard:
    """What ShardServicer reads from a Shard: an index, its number and no next version."""

    def __init__(self, index: ShardIndex, shard: int) -> None:
        self.index = index
        self.next_version = ""

        class S:
            pass
        self.s = S()
        self.s.shard = shard


class _Build:
    """Times a build and the RSS it adds (approximate: the allocator may keep freed pages)."""

    def __enter__(self):
        gc.collect()
        self.t0, self.r0 = time.perf_counter(), rss_gb()
        return self

    def __exit__(self, *exc):
        self.s, self.gb = time.perf_counter() - self.t0, max(0.0, rss_gb() - self.r0)


def row(name, res, lat, qps, exact, build: _Build | None = None):
    b = f"{build.s:.1f} | {build.gb:.2f}" if build else "— | —"
    print(f"| {name} | {recall(res, exact):.3f} | {qps:,.0f} | {1e3 * np.percentile(lat, 50):.2f}"
          f" | {1e3 * np.percentile(lat, 99):.2f} | {b} |", flush=True)


def _shards_via_grpc(n, db, qs, exact, params, k) -> None:
    ids = np.arange(n)
    with _Build() as b:
        shards = [ShardIndex.build("bench", ids[ids % 2 == s], db[ids % 2 == s], params)
                  for s in range(2)]
    servers, stubs, servicers = [], [], []
    for s, idx in enumerate(shards):
        servicers.append(ShardServicer(_FakeShard(idx, s)))
        srv = GrpcServer([(search_pb2_grpc.add_ShardServiceServicer_to_server,
                           servicers[-1], "magiclens.v1.ShardService")])
        srv.start()
        servers.append(srv)
        stubs.append(search_pb2_grpc.ShardServiceStub(rpc.channel(f"127.0.0.1:{srv.port}")))

    def grpc_search(q):
        req = search_pb2.SearchShardRequest(query=q.tolist(), k=k)
        fs = [st.SearchShard.future(req, timeout=5) for st in stubs]
        hits = [h for f in fs for h in f.result().hits]
        return [h.image_id for h in sorted(hits, key=lambda h: -h.score)[:k]]

    row(f"ScaNN shards via gRPC (2 × {n // 2:,}, {shards[0].kind})", *timed(grpc_search, qs),
        exact, b)
    # Concurrent clients (threads of this process, which also hosts both shards), with the
    # shards' batching of concurrent searches into search_batched, then without it.
    for clients in CLIENTS:
        row(f"  the same, {clients} concurrent clients, batched", *concurrent(
            grpc_search, qs, clients), exact)
    batchers = [sv.batcher for sv in servicers]
    for sv in servicers:
        sv.batcher = QueryBatcher(max_batch=1)
    for clients in CLIENTS:
        row(f"  the same, {clients} concurrent clients, one search per request", *concurrent(
            grpc_search, qs, clients), exact)
    for sv, bt in zip(servicers, batchers, strict=True):
        sv.batcher = bt
    for srv in servers:
        srv.stop(0)


def _raw_scann(n, db, qs, exact, params, k) -> None:
    with _Build() as b:
        full = ShardIndex.build("bench", np.arange(n), db, params)
    row(f"raw ScaNN in-process ({full.kind}, 1 × {n:,})",
        *timed(lambda q: [i for i, _ in full.search(q, k)], qs), exact, b)
    for clients in CLIENTS:
        row(f"  the same, {clients} threads", *concurrent(
            lambda q: [i for i, _ in full.search(q, k)], qs, clients), exact)
    batch = max(CLIENTS)
    got, lat = [], []
    t0 = time.perf_counter()
    for a in range(0, len(qs), batch):
        s = time.perf_counter()
        hits = full.search_batch([Query(q, k) for q in qs[a:a + batch]])
        got += [[i for i, _ in h] for h in hits]
        lat += [time.perf_counter() - s] * len(qs[a:a + batch])
    row(f"  the same, search_batched in batches of {batch}", got, np.array(lat),
        len(qs) / (time.perf_counter() - t0), exact)
    if full.kind == "tree_ah":  # the same searcher, more exact rescoring, for matched recall
        for r in (500, 1000):
            row(f"raw ScaNN in-process, same index, reorder {r} at query time",
                *timed(lambda q, r=r: [int(i) for i in full._searcher.search(
                    q, final_num_neighbors=k, pre_reorder_num_neighbors=r)[0]], qs), exact)


def _faiss(n, db, qs, exact, k) -> None:
    try:
        import faiss
    except ImportError:
        print("| FAISS | not installed (pip install faiss-cpu) | | | | | |")
        return
    d, nlist = db.shape[1], int(np.sqrt(n)) * 2
    with _Build() as b:
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(db[: min(n, 100_000)])
        ivf.add(db)
    for nprobe in (4, 16, 64):
        ivf.nprobe = nprobe
        row(f"FAISS IVF-Flat nlist={nlist} nprobe={nprobe}",
            *timed(lambda q: ivf.search(q[None], k)[1][0].tolist(), qs), exact,
            b if nprobe == 4 else None)


def _hnswlib(n, db, qs, exact, k) -> None:
    try:
        import hnswlib
    except ImportError:
        print("| hnswlib | not installed (pip install hnswlib) | | | | | |")
        return
    with _Build() as b:
        h = hnswlib.Index(space="ip", dim=db.shape[1])
        h.init_index(max_elements=n, ef_construction=100, M=16)
        h.add_items(db, np.arange(n))
    for ef in (32, 64, 128, 256):
        h.set_ef(ef)
        row(f"hnswlib M=16 ef={ef}", *timed(lambda q: h.knn_query(q, k)[0][0].tolist(), qs),
            exact, b if ef == 32 else None)


def _pool(n: int, nq: int, d: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    x = clustered(n + nq, d, max(16, n // 1000), rng)
    db, qs = x[:n], x[n:]
    return db, qs, exact_topk(db, qs, k)


def run(n: int, nq: int, d: int = 512, k: int = 10) -> None:
    """Each system is built, measured and freed (on return) before the next is built."""
    db, qs, exact = _pool(n, nq, d, k, 0)
    print(f"\n### n={n:,} d={d}, {nq} queries, k={k}, float32 vectors {db.nbytes / 1e9:.2f} GB\n")
    print("| system | recall@10 | QPS (1 client) | p50 ms | p99 ms | build s | RSS +GB |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    params = IndexParams()  # the shard's defaults (threshold, leaves, reorder)
    _shards_via_grpc(n, db, qs, exact, params, k)
    _raw_scann(n, db, qs, exact, params, k)
    row("numpy brute force", *timed(lambda q: np.argsort(-(db @ q))[:k].tolist(), qs[:100]),
        exact[:100])
    _faiss(n, db, qs, exact, k)
    _hnswlib(n, db, qs, exact, k)
    gc.collect()
    print(f"\n<!-- peak RSS of the process so far: {peak_gb():.1f} GB -->", flush=True)


def threshold_sweep(sizes: list[int], nq: int, budget_ms: float, d: int = 512, k: int = 10,
                    repeats: int = 3) -> None:
    """Brute force vs the tree config the shard builds, per pool size, in this run. Prints
    two crossovers: where the tree first beats brute force on QPS, and the largest pool where
    brute force (exact, no build, no drift after upserts) still answers within `budget_ms`
    at p50, i.e. costs the client nothing it would notice next to the gRPC fan-out."""
    print(f"\n### brute force vs tree + AH + reorder per shard pool, d={d}, {nq} queries, k={k},"
          f" best of {repeats} interleaved runs\n")
    print("| vectors | brute QPS | brute p50 / p99 ms | tree QPS | tree p50 / p99 ms "
          "| tree recall@10 | tree build s | tree/brute QPS |\n|---|---|---|---|---|---|---|---|",
          flush=True)
    crossover, within = None, None
    for n in sizes:
        db, qs, exact = _pool(n, nq, d, k, n)
        ids = np.arange(n)
        brute = ShardIndex.build("b", ids, db, IndexParams(brute_threshold=n + 1))
        with _Build() as b:
            tree = ShardIndex.build("t", ids, db, IndexParams(brute_threshold=1))
        assert (brute.kind, tree.kind) == ("brute_force", "tree_ah")
        best: dict[str, tuple] = {}
        for _ in range(repeats):  # interleaved, so background load hits both alike
            for name, idx in (("brute", brute), ("tree", tree)):
                res, lat, qps = timed(lambda q, idx=idx: [i for i, _ in idx.search(q, k)], qs)
                if name not in best or qps > best[name][2]:
                    best[name] = (res, lat, qps)
        (_, bl, bq), (tres, tl, tq) = best["brute"], best["tree"]
        r = recall(tres, exact)
        print(f"| {n:,} | {bq:,.0f} | {1e3 * np.percentile(bl, 50):.2f} / "
              f"{1e3 * np.percentile(bl, 99):.2f} | {tq:,.0f} | {1e3 * np.percentile(tl, 50):.2f}"
              f" / {1e3 * np.percentile(tl, 99):.2f} | {r:.3f} | {b.s:.1f} | {tq / bq:.2f}x |",
              flush=True)
        if crossover is None and tq > bq:
            crossover = n
        if 1e3 * np.percentile(bl, 50) <= budget_ms:
            within = n
        del brute, tree, db
        gc.collect()
    if crossover is None:
        print("\ncrossover: brute force is faster at every size measured")
    else:
        print(f"\ncrossover: the tree is first faster than brute force at {crossover:,} vectors "
              "per shard (the sizes before it: brute force is both exact and faster)")
    print(f"brute force p50 within {budget_ms} ms: up to {within or 0:,} vectors per shard "
          "(the largest size measured that is)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="*", default=[100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--million", action="store_true", help="also run 1M vectors (~30 min, ~8 GB)")
    ap.add_argument("--threshold-sweep", action="store_true",
                    help="only time brute force vs the tree per pool size (--sizes)")
    ap.add_argument("--sizes", type=int, nargs="*",
                    default=[1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 50_000, 100_000])
    ap.add_argument("--budget-ms", type=float, default=0.5,
                    help="brute-force p50 a shard may spend (the gRPC path costs ~3 ms)")
    args = ap.parse_args()
    if args.threshold_sweep:
        threshold_sweep(args.sizes, args.queries, args.budget_ms)
        return
    for n in args.n + ([1_000_000] if args.million else []):
        run(n, args.queries)


if __name__ == "__main__":
    main()
