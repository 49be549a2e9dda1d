"""Search benchmark: synthetic clustered 512-d unit vectors split over 2 ScaNN shards served by
the real ShardService over gRPC (fan-out + merge as the root does), against raw ScaNN
in-process, FAISS (IVF-Flat) and hnswlib at matched recall@10 vs brute force.

    python bench/search.py [--n 100000] [--queries 500] [--million]

FAISS/hnswlib are optional (bench-only; `pip install faiss-cpu hnswlib` in a scratch venv
with numpy 2); missing ones are reported as not installed.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "gen")]

from magiclens.v1 import search_pb2, search_pb2_grpc  # noqa: E402

from services.runtime.grpc_server import GrpcServer  # noqa: E402
from services.search.index import IndexParams, ShardIndex  # noqa: E402
from services.search.shard import ShardServicer  # noqa: E402


def clustered(n: int, d: int, clusters: int, rng) -> np.ndarray:
    centers = rng.normal(size=(clusters, d)).astype(np.float32)
    x = centers[rng.integers(clusters, size=n)] + 0.35 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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


class _FakeShard:
    """What ShardServicer reads from a Shard: an index, its number and no next version."""

    def __init__(self, index: ShardIndex, shard: int) -> None:
        self.index = index
        self.next_version = ""

        class S:
            pass
        self.s = S()
        self.s.shard = shard


def row(name, res, lat, qps, exact):
    print(f"| {name} | {recall(res, exact):.3f} | {qps:,.0f} | {1e3 * np.percentile(lat, 50):.2f}"
          f" | {1e3 * np.percentile(lat, 99):.2f} |", flush=True)


def run(n: int, nq: int, d: int = 512, k: int = 10) -> None:
    rng = np.random.default_rng(0)
    x = clustered(n + nq, d, max(16, n // 1000), rng)
    db, qs = x[:n], x[n:]
    exact = np.argsort(-(qs @ db.T), axis=1)[:, :k]
    print(f"\n### n={n:,} d={d}, {nq} queries, k={k}\n")
    print("| system | recall@10 | QPS (1 client) | p50 ms | p99 ms |\n|---|---|---|---|---|")
    t0 = time.perf_counter()
    ids = np.arange(n)
    params = IndexParams(brute_threshold=20_000)
    shards = [ShardIndex.build("bench", ids[ids % 2 == s], db[ids % 2 == s], params)
              for s in range(2)]
    print(f"<!-- 2 shards built in {time.perf_counter() - t0:.1f}s ({shards[0].kind}) -->")
    servers, stubs = [], []
    for s, idx in enumerate(shards):
        srv = GrpcServer([(search_pb2_grpc.add_ShardServiceServicer_to_server,
                           ShardServicer(_FakeShard(idx, s)), "magiclens.v1.ShardService")])
        srv.start()
        servers.append(srv)
        stubs.append(search_pb2_grpc.ShardServiceStub(grpc.insecure_channel(f"127.0.0.1:{srv.port}")))
    pool = futures.ThreadPoolExecutor(4)

    def grpc_search(q):
        req = search_pb2.SearchShardRequest(query=q.tolist(), k=k)
        fs = [st.SearchShard.future(req, timeout=5) for st in stubs]
        hits = [h for f in fs for h in f.result().hits]
        return [h.image_id for h in sorted(hits, key=lambda h: -h.score)[:k]]

    row("ScaNN shards via gRPC (2 shards)", *timed(grpc_search, qs), exact)
    full = ShardIndex.build("bench", ids, db, params)
    row(f"raw ScaNN in-process ({full.kind})",
        *timed(lambda q: [i for i, _ in full.search(q, k)], qs), exact)
    row("numpy brute force", *timed(lambda q: np.argsort(-(db @ q))[:k].tolist(), qs[:100]),
        exact[:100])
    try:
        import faiss

        nlist = int(np.sqrt(n)) * 2
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(db[: min(n, 100_000)])
        ivf.add(db)
        for nprobe in (4, 16, 64):
            ivf.nprobe = nprobe
            row(f"FAISS IVF-Flat nlist={nlist} nprobe={nprobe}",
                *timed(lambda q: ivf.search(q[None], k)[1][0].tolist(), qs), exact)
    except ImportError:
        print("| FAISS | not installed (pip install faiss-cpu) | | | |")
    try:
        import hnswlib

        h = hnswlib.Index(space="ip", dim=d)
        h.init_index(max_elements=n, ef_construction=100, M=16)
        h.add_items(db, ids)
        for ef in (32, 64, 128):
            h.set_ef(ef)
            row(f"hnswlib M=16 ef={ef}", *timed(lambda q: h.knn_query(q, k)[0][0].tolist(), qs),
                exact)
    except ImportError:
        print("| hnswlib | not installed (pip install hnswlib) | | | |")
    for srv in servers:
        srv.stop(0)
    pool.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="*", default=[100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--million", action="store_true", help="also run 1M vectors (minutes, ~8 GB)")
    args = ap.parse_args()
    for n in args.n + ([1_000_000] if args.million else []):
        run(n, args.queries)


if __name__ == "__main__":
    main()
