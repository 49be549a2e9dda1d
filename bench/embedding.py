"""Embedding throughput.

Default mode: images/s through the Triton server (gRPC, bytes in) vs the same model
in-process (decode + preprocess + jitted encode), per batch size; ratio = serving overhead.

    python bench/embedding.py --triton-url 127.0.0.1:8001 --checkpoint DIR [--batches 1 4 16]

`--latency`: one image per request, sequential, through one or more servers (e.g. one
started with MAGICLENS_IMAGE_RUNTIME=jax beside one with onnxruntime), interleaved rounds:
median ms per query and per target request, mean ± sd over rounds.

    python bench/embedding.py --latency --triton-url 127.0.0.1:8001 127.0.0.1:8011 [--rounds 3]

`--worker`: re-embedding throughput of the embedding worker (its reconcile pass: Postgres ->
blob store -> Triton -> image_embeddings + outbox) on one pool, one image per Triton request
vs the worker's default batch, against one or more servers (e.g. one started with
MAGICLENS_IMAGE_RUNTIME=jax beside one with onnxruntime) in the same run. Per run: images/s,
the worker's seconds per stage (claim, blobs, embed = the Triton request, store), CPU ms per
image of the worker and, given `--triton-pid`, of the server (its process tree), and the
images per CPU-second x 2 cores that those imply: the rate on two cores of one's own, which
a shared machine's wall time does not show.

    python bench/embedding.py --worker --triton-url 127.0.0.1:8001 [127.0.0.1:8011 ...]
        [--triton-pid PID ...] [--pool 96] [--rounds 2] [--worker-batches 16]

`--tower`: the image tower, JAX (XLA:CPU, jitted Flax) vs onnxruntime (what the compact
backbone serves with, services/embedding/onnx_tower.py), in-process, interleaved rounds:
latency of one image and images/s of a batch of 16 through `LoadedModel.image_features`,
re-embedding images/s (`encode_target` on JPEG bytes: decode, preprocess, tower, head, at
the worker's batch), the onnxruntime threading variants the serving choice was made from,
and how far the onnxruntime vectors are from JAX's. Mean ± sd over rounds, ratios
onnxruntime / JAX, and CPU ms per image (which other load on a shared machine moves less).

    python bench/embedding.py --tower --checkpoint DIR [--rounds 3] [--seconds 4]

The worker mode needs PostgreSQL (DATABASE_URL, default the local infra) and creates and drops
its own database; it embeds with whatever version the server serves. Start the server first
(task serving:triton -- --checkpoint DIR).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import skimage.data
from PIL import Image

from runtime import db, ports
from runtime.blobstore import open_blobstore
from runtime.config import load_settings
from runtime.embedding_client import EmbeddingClient
from runtime.serving import set_serving_version
from services.embedding.config import WorkerSettings
from services.embedding.worker import Worker


def images(n: int) -> list[bytes]:
    base = Image.fromarray(skimage.data.astronaut())
    out = []
    for i in range(n):
        buf = io.BytesIO()
        base.rotate(i * 3).resize((320, 320)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def rate(fn, batch: list[bytes], seconds: float) -> float:
    fn(batch)  # warm (compile / connect)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def serving_overhead(args) -> None:
    # JAX loads only for this mode; --worker measures Triton through the real worker.
    from services.embedding.model import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    client = EmbeddingClient(args.triton_url[0])
    print("| model | batch | Triton img/s | in-process img/s | in-process / Triton |")
    print("|---|---|---|---|---|")
    for b in args.batches:
        batch = images(b)
        instr = ["make it red"] * b
        for name, tri, loc in (
            ("target", lambda x: client.embed_targets(x), lambda x: model.encode_target(x)),
            ("query", lambda x, i=instr: client.embed_queries(x, i),
             lambda x, i=instr: model.encode_query(x, i)),
        ):
            t = rate(tri, batch, args.seconds)
            local = rate(loc, batch, args.seconds)
            print(f"| {name} | {b} | {t:.1f} | {local:.1f} | {local / t:.2f} |", flush=True)


def timed(fn, x, seconds: float) -> tuple[float, float, float]:
    """(median ms per call, items/s, CPU ms per item) of fn(x) over `seconds`."""
    fn(x)  # warm
    lat, n = [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        s = time.perf_counter()
        fn(x)
        lat.append(time.perf_counter() - s)
        n += len(x)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return statistics.median(lat) * 1e3, n / dt, cpu / n * 1e3


def _ms(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.1f} ± {sd:.1f}"


def tower_runtimes(args) -> None:
    """JAX vs onnxruntime image tower, in-process, side by side (see the module doc)."""
    import jax
    import numpy as np

    from services.embedding import onnx_tower
    from services.embedding.model import LoadedModel, load_checkpoint

    ort_model = load_checkpoint(args.checkpoint, image_runtime="onnxruntime")
    jax_model = LoadedModel(ort_model.model_version, ort_model.config_name, ort_model.params,
                            ort_model.model, ort_model.preprocessor, image_runtime="jax")
    if ort_model.image_runtime_used != "onnxruntime":
        raise SystemExit("this checkpoint's image tower cannot run on onnxruntime")
    batch = WorkerSettings.model_fields["embed_batch"].default
    for m in (jax_model, ort_model):
        m.warmup()
        m.warm_rest()
    jpegs = images(max(16, batch))
    pixels = ort_model.preprocess_images(jpegs[:16])

    # how far apart the two runtimes' numbers are
    f_jax, f_ort = jax_model.image_features(pixels), ort_model.image_features(pixels)
    t_jax, t_ort = jax_model.encode_target_pixels(pixels), ort_model.encode_target_pixels(pixels)
    print(f"checkpoint {args.checkpoint}, {len(os.sched_getaffinity(0))} cores; max |ORT - JAX|:"
          f" image features {np.abs(f_ort - f_jax).max():.1e} (max |value| "
          f"{np.abs(f_jax).max():.1f}), target embeddings {np.abs(t_ort - t_jax).max():.1e}\n")

    tower = jax.tree.map(np.asarray, ort_model.params["backbone"]["image_tower"])
    graph = onnx_tower.graph(tower)
    variants = {
        "ORT 1 thread": onnx_tower.session(graph, 1),
        "ORT 2 threads": onnx_tower.session(graph, 2),
        "ORT 2 threads, spinning": onnx_tower.session(graph, 2, spin=True),
    }
    rows: dict[str, dict[str, list[float]]] = {}

    def record(name: str, key: str, value: float) -> None:
        rows.setdefault(name, {}).setdefault(key, []).append(value)

    for _ in range(args.rounds):
        for name, m in (("JAX (XLA:CPU)", jax_model), ("onnxruntime", ort_model)):
            ms, _, cpu1 = timed(m.image_features, pixels[:1], args.seconds)
            _, ips, cpu16 = timed(m.image_features, pixels, args.seconds)
            _, reps, cpur = timed(m.encode_target, jpegs[:batch], args.seconds)
            for key, v in (("b1 ms", ms), ("b1 CPU ms", cpu1), ("b16 img/s", ips),
                           ("b16 CPU ms/img", cpu16), ("re-embed img/s", reps),
                           ("re-embed CPU ms/img", cpur)):
                record(name, key, v)
        for name, sess in variants.items():
            fn = lambda x, s=sess: onnx_tower.run(s, x)  # noqa: E731
            ms, _, cpu1 = timed(fn, pixels[:1], args.seconds)
            _, ips, cpu16 = timed(fn, pixels, args.seconds)
            for key, v in (("b1 ms", ms), ("b1 CPU ms", cpu1), ("b16 img/s", ips),
                           ("b16 CPU ms/img", cpu16)):
                record(name, key, v)
    keys = ["b1 ms", "b1 CPU ms", "b16 img/s", "b16 CPU ms/img", "re-embed img/s",
            "re-embed CPU ms/img"]
    print(f"{args.rounds} rounds of {args.seconds:g} s per cell, mean ± sd; b1 ms = median "
          f"latency of one image; re-embed = encode_target of {batch} JPEGs per call")
    print("| runtime | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, cols in rows.items():
        print(f"| {name} | " + " | ".join(_ms(cols[k]) if k in cols else "" for k in keys)
              + " |")
    j, o = rows["JAX (XLA:CPU)"], rows["onnxruntime"]

    def ratio(num: dict, den: dict, key: str) -> str:
        return f"{statistics.mean(num[key]) / statistics.mean(den[key]):.2f}x"

    print(f"\nonnxruntime vs JAX: b1 latency {ratio(j, o, 'b1 ms')} faster, b16 throughput "
          f"{ratio(o, j, 'b16 img/s')}, re-embedding {ratio(o, j, 're-embed img/s')}; CPU per "
          f"image {ratio(j, o, 'b16 CPU ms/img')} less at b16, "
          f"{ratio(j, o, 're-embed CPU ms/img')} less re-embedding")


def request_latency(args) -> None:
    clients = {url: EmbeddingClient(url) for url in args.triton_url}
    pool = images(8)
    medians: dict[tuple[str, str], list[float]] = {}
    calls = {"query": lambda c, b: c.embed_queries([b], ["make it red"]),
             "target": lambda c, b: c.embed_targets([b])}
    for _ in range(args.rounds):
        for url, client in clients.items():
            for kind, call in calls.items():
                call(client, pool[0])
                lat = []
                for i in range(args.requests):
                    t0 = time.perf_counter()
                    call(client, pool[i % len(pool)])
                    lat.append((time.perf_counter() - t0) * 1e3)
                medians.setdefault((url, kind), []).append(statistics.median(lat))
    print(f"{args.rounds} rounds of {args.requests} sequential one-image requests; median ms "
          "per request, mean ± sd over rounds")
    print("| Triton | query ms | target ms |")
    print("|---|---|---|")
    for url in clients:
        print(f"| {url} | {_ms(medians[url, 'query'])} | {_ms(medians[url, 'target'])} |")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its descendants."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def worker_throughput(args) -> None:

    urls = args.triton_url
    client = EmbeddingClient(urls[0])
    pool = images(args.pool)
    version = client.embed_targets(pool[:1]).model_version
    default_batch = WorkerSettings.model_fields["embed_batch"].default
    admin = args.database_url or os.environ.get("DATABASE_URL") or ports.local_database_url()
    name = f"ml_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = f"{admin.rpartition('/')[0]}/{name}"
    tmp = tempfile.TemporaryDirectory(prefix="bench-worker-")
    try:
        db.migrate(db_url)
        blob_uri = f"file://{tmp.name}/blobs"
        blobs = open_blobstore(blob_uri)
        with db.transaction(db_url) as conn:
            conn.execute("INSERT INTO model_versions (model_version, config_name, checkpoint_uri,"
                         " status) VALUES (%s, 'compact', 'file:///bench', 'promoted')",
                         (version,))
            set_serving_version(conn, version, "file:///bench")
            page = conn.execute("INSERT INTO pages (url, url_hash, domain, source, status) "
                                "VALUES ('https://bench.example/', 'bench', 'bench.example', "
                                "'bench', 'mined') RETURNING page_id").fetchone()["page_id"]
            for i, img in enumerate(pool):
                conn.execute("INSERT INTO images (content_hash, source_url, first_page_id, "
                             "blob_uri, mime_type) VALUES (%s, %s, %s, %s, 'image/jpeg')",
                             (f"bench-{i}", f"https://bench.example/{i}.jpg", page,
                              blobs.put(img, ".jpg")))
        batches = args.worker_batches or [1, default_batch]
        for url in urls:
            warm = EmbeddingClient(url)
            for b in sorted(set(batches)):
                warm.embed_targets(pool[:b])  # the server compiles each batch shape once
            warm.close()
        print(f"pool: {len(pool)} images (320x320 JPEG), model version {version}")
        pids = dict(zip(urls, args.triton_pid, strict=False))
        print("| round | Triton | images per request | images | Triton requests | s | images/s "
              "| claim s | blobs s | embed s | store s | worker CPU ms/img | server CPU ms/img "
              "| images per CPU-s x 2 cores |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        rates: dict[tuple[str, int], list[float]] = {}
        for r in range(args.rounds):
            for url, b in [(u, b) for u in urls for b in batches]:
                with db.transaction(db_url) as conn:
                    conn.execute("DELETE FROM image_embeddings")
                    conn.execute("DELETE FROM outbox")
                settings = load_settings(
                    WorkerSettings, database_url=db_url, triton_url=url,
                    embed_batch=b, blob_uri=blob_uri,
                    current_model_file=Path(tmp.name) / "current_model.json")
                worker = Worker(settings)
                consumer = worker.consumer()
                s0 = tree_cpu_s(pids[url]) if url in pids else 0.0
                t0, c0 = time.perf_counter(), time.process_time()
                consumer.reconcile()
                dt, cpu = time.perf_counter() - t0, time.process_time() - c0
                server = (tree_cpu_s(pids[url]) - s0) if url in pids else float("nan")
                worker.client.close()
                if worker.embedded != len(pool):
                    raise SystemExit(f"embedded {worker.embedded} of {len(pool)}")
                rates.setdefault((url, b), []).append(len(pool) / dt)
                st = worker.stage_s
                print(f"| {r + 1} | {url} | {b} | {len(pool)} | {worker.requests} | {dt:.1f} | "
                      f"{len(pool) / dt:.1f} | {st['claim']:.2f} | {st['blobs']:.2f} | "
                      f"{st['embed']:.2f} | {st['store']:.2f} | {cpu / len(pool) * 1e3:.1f} | "
                      f"{server / len(pool) * 1e3:.1f} | {2 * len(pool) / (cpu + server):.0f} |",
                      flush=True)
        print()
        for (url, b), rs in rates.items():
            print(f"images/s, Triton {url}, {b} per request: {_ms(rs)} (mean ± sd over rounds; "
                  f"min {min(rs):.1f}, max {max(rs):.1f})")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--triton-url", nargs="+", default=[ports.TRITON_ADDR],
                    help="--worker: several servers (e.g. MAGICLENS_IMAGE_RUNTIME=jax and "
                         "onnxruntime) in one run")
    ap.add_argument("--checkpoint", help="the served checkpoint (serving-overhead mode)")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--worker", action="store_true",
                    help="re-embedding throughput of the worker: batch 1 vs its default")
    ap.add_argument("--pool", type=int, default=96, help="images in the pool (--worker)")
    ap.add_argument("--rounds", type=int, default=1, help="repeats of all runs (--worker, --tower)")
    ap.add_argument("--latency", action="store_true",
                    help="one-image request latency through each --triton-url")
    ap.add_argument("--requests", type=int, default=80, help="requests per round (--latency)")
    ap.add_argument("--tower", action="store_true",
                    help="the image tower, JAX vs onnxruntime, in-process (needs --checkpoint)")
    ap.add_argument("--triton-pid", type=int, nargs="*", default=[],
                    help="--worker: the servers' pids, in --triton-url order, to count their "
                         "CPU time (a measure that other load on the machine moves less)")
    ap.add_argument("--worker-batches", type=int, nargs="*", default=[],
                    help="images per request to run (--worker; default 1 and the worker's)")
    ap.add_argument("--database-url", default="", help="server for the scratch database "
                    "(--worker; default DATABASE_URL or the local infra)")
    args = ap.parse_args()
    if args.worker:
        worker_throughput(args)
    elif args.latency:
        request_latency(args)
    elif args.tower and args.checkpoint:
        tower_runtimes(args)
    elif not args.checkpoint:
        ap.error("--checkpoint is required (or --worker)")
    else:
        serving_overhead(args)


if __name__ == "__main__":
    main()
