"""`./taskw demo`: the main job, end to end on the bundled corpus.

Starts the infrastructure and every service (Procfile), builds the corpus, ingests it through
Kafka, waits while the services mine it, write triples, then trains the `compact` model
through the training service, promotes it (Triton hot-swaps, the worker embeds the pool, the
shards index it), runs example queries through the search API and ends with the quality
table on the held-out pages. Every step checks Postgres state first, so a re-run resumes
instead of redoing. Knobs: MAGICLENS_DEMO_SIZE (small|medium|default|full), MAGICLENS_DEMO_STEPS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from magiclens.v1 import common_pb2, search_pb2, search_pb2_grpc
from psycopg.rows import dict_row

from runtime import auth, db, ports, rpc
from runtime.bus import ensure_topics
from runtime.config import load_settings, project_root
from services.training import client
from services.training.config import TrainingSettings
from tools import infra

ROOT = project_root()
DATA = Path(os.environ.get("MAGICLENS_DATA_DIR", ROOT / "data"))
CORPUS = DATA / "corpus"
SITE = ports.CORPUS_SITE_URL
SERVICES = {"mining": ports.MINING.grpc, "triplegen": ports.TRIPLEGEN.grpc,
            "training": ports.TRAINING.grpc, "search root": ports.SEARCH_ROOT.grpc}
EXAMPLE_RELATIONS = ("same_country_landmark", "emoji_style", "skin_tone", "gender",
                     "neighbour_flag", "same_category", "animal_emoji", "country_flag")


class DemoError(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def run(cmd: list[str], what: str) -> None:
    started = time.monotonic()
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise DemoError(f"{what} failed (see the output above)")
    say(f"{what}: done in {time.monotonic() - started:.0f}s")


def counts(url: str) -> dict[str, int]:
    """The pipeline's state, straight from Postgres (the system of record)."""
    q = {
        "pages": "SELECT count(*) FROM pages",
        "pages_pending": "SELECT count(*) FROM pages WHERE status IN ('discovered','fetching')",
        "images": "SELECT count(*) FROM live_images",
        "annotated": "SELECT count(*) FROM image_annotations",
        "pairs": "SELECT count(*) FROM pairs",
        "pairs_pending": "SELECT count(*) FROM pairs WHERE status IN ('mined','kept')",
        "triples": "SELECT count(*) FROM triples WHERE status = 'active'",
        "outbox_pending": "SELECT count(*) FROM outbox WHERE published_at IS NULL",
    }
    with psycopg.connect(url) as conn:
        return {k: conn.execute(sql).fetchone()[0] for k, sql in q.items()}


def wait_until(what: str, done: Callable[[], bool], status: Callable[[], str],
               timeout: float, stable_s: float = 0.0) -> None:
    """Poll with a live one-line status; `stable_s` requires done() to hold that long."""
    start = time.monotonic()
    held_since: float | None = None
    last = ""
    while True:
        ok = done()
        now = time.monotonic()
        held_since = (held_since or now) if ok else None
        line = f"\r  {what}: {status()}  [{now - start:4.0f}s]"
        if sys.stdout.isatty():
            print(line.ljust(100), end="", flush=True)
        elif line != last and int(now - start) % 15 == 0:
            print(line.strip(), flush=True)
        last = line
        if ok and now - (held_since or now) >= stable_s:
            if sys.stdout.isatty():
                print(flush=True)
            return
        if now - start > timeout:
            print(flush=True)
            raise DemoError(f"{what} did not finish within {timeout:.0f}s ({status()}); "
                            f"see data/logs/")
        time.sleep(1.0)


def grpc_healthy(port: int) -> bool:
    try:
        with grpc.insecure_channel(ports.local(port)) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                        timeout=2)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def promoted_version(url: str) -> dict | None:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT model_version, checkpoint_uri, metrics FROM model_versions "
                            "WHERE status = 'promoted'").fetchone()


def indexed(url: str, version: str) -> tuple[int, int]:
    """(images with an embedding of `version`, images that should have one)."""
    with psycopg.connect(url) as conn:
        have = conn.execute("SELECT count(*) FROM image_embeddings WHERE model_version = %s",
                            (version,)).fetchone()[0]
        want = conn.execute("SELECT count(*) FROM live_images").fetchone()[0]
    return have, want


def shard_vectors(version: str) -> int:
    try:
        with rpc.channel(ports.SEARCH_ADDR, role=auth.READ) as ch:
            st = search_pb2_grpc.SearchServiceStub(ch).GetIndexStatus(
                search_pb2.GetIndexStatusRequest(), timeout=5)
            return int(st.num_vectors) if st.model_version == version else 0
    except grpc.RpcError:
        return 0


# ---------------------------------------------------------------- steps

def step_infra() -> str:
    env = infra.up()
    os.environ.update(env)
    db.migrate(env["DATABASE_URL"])
    ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"])
    say(f"infrastructure up: {env['DATABASE_URL']} · Kafka {env['KAFKA_BOOTSTRAP_SERVERS']}")
    return env["DATABASE_URL"]


def step_corpus(size: str) -> None:
    manifest = CORPUS / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("size") == size:
        say(f"corpus ({size}) already built")
        return
    run([sys.executable, "-m", "tools.corpus", "build", "--size", size, "--out",
         str(CORPUS)], f"build the {size} corpus")


def step_services() -> None:
    run([sys.executable, "-m", "tools.procs", "up"], "start every service")
    wait_until("services healthy", lambda: all(grpc_healthy(p) for p in SERVICES.values()),
               lambda: ", ".join(f"{n} {'up' if grpc_healthy(p) else '…'}"
                                 for n, p in SERVICES.items()), timeout=300)


def step_ingest(url: str) -> None:
    pages_in_corpus = len(json.loads((CORPUS / "manifest.json").read_text())["pages"])
    if counts(url)["pages"] >= pages_in_corpus:
        say("corpus pages already ingested")
    else:
        run([sys.executable, "-m", "tools.ingest", "--sitemap", SITE + "sitemap.xml",
             "--allow-private", "--heldout-file", str(CORPUS / "heldout_pages.txt")],
            "submit the corpus pages to the mining service")

    def status() -> str:
        c = counts(url)
        return (f"pages {c['pages'] - c['pages_pending']}/{c['pages']} mined · images "
                f"{c['images']} · annotated {c['annotated']} · pairs {c['pairs']} "
                f"(pending {c['pairs_pending']}) · triples {c['triples']}")

    def done() -> bool:
        c = counts(url)
        return (c["pages"] >= pages_in_corpus * 0.95 and c["pages_pending"] == 0
                and c["pairs_pending"] == 0 and c["annotated"] >= c["images"] > 0
                and c["outbox_pending"] == 0)

    wait_until("mining and triple generation", done, status, timeout=3600, stable_s=5)


def step_train(url: str, steps: int) -> dict:
    current = promoted_version(url)
    if current:
        say(f"model {current['model_version']} already trained and promoted")
        return current
    with psycopg.connect(url, row_factory=dict_row) as conn:
        run_row = conn.execute("SELECT run_id, status FROM training_runs "
                               "WHERE status IN ('queued','running','succeeded') "
                               "ORDER BY created_at DESC LIMIT 1").fetchone()
    if run_row is None:
        started = client.start_training("compact", steps=steps, mode="frozen")
        run_id = started.run_id
        say(f"training run {run_id} started (compact: alignment, then fusion on triples)")
    else:
        run_id = run_row["run_id"]
        say(f"resuming the wait for training run {run_id}")

    def progress(r) -> None:
        total = r.total_steps or 0
        loss = f" loss {r.last_loss:.3f}" if r.last_loss else ""
        print(f"  training: {r.status} step {r.step}/{total}{loss}", flush=True)

    final = client.wait_for_run(run_id, timeout=3600, poll_s=5, on_progress=progress)
    if final.status != "succeeded":
        raise DemoError(f"training run {run_id} failed: {final.reason}")
    client.promote(final.model_version)
    say(f"model {final.model_version} promoted (Triton hot-swaps to it)")
    return promoted_version(url) or {}


def step_index(url: str, version: str) -> None:
    def status() -> str:
        have, want = indexed(url, version)
        return f"embedded {have}/{want} · searchable {shard_vectors(version)}"

    def done() -> bool:
        have, want = indexed(url, version)
        return have >= want > 0 and shard_vectors(version) >= want

    wait_until("embedding and indexing the pool", done, status, timeout=3600)


def _pool_ids(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {u: i for u, i in conn.execute(
            "SELECT source_url, image_id FROM live_images")}


def _read_queries(name: str) -> list[dict]:
    path = CORPUS / name
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def step_examples(url: str, per_relation: int = 1, k: int = 5) -> list[dict]:
    """Run example queries through the real search API and print the hits.

    Held-out queries come first; relations the held-out pages lack are shown with a query
    from a training page (marked so: those images were trained on).
    """
    ids = _pool_ids(url)
    pools = [("held-out", _read_queries("eval_queries.jsonl")),
             ("training page", _read_queries("example_queries.jsonl"))]
    chosen = []
    for rel in EXAMPLE_RELATIONS:
        picked = 0
        for origin, queries in pools:
            for q in queries:
                if picked >= per_relation:
                    break
                if (q["relation"] == rel and q["query_url"] in ids
                        and any(t in ids for t in q["target_urls"])):
                    chosen.append((origin, q))
                    picked += 1
    examples = []
    with rpc.channel(ports.SEARCH_ADDR, role=auth.READ) as ch:
        stub = search_pb2_grpc.SearchServiceStub(ch)
        for origin, q in chosen:
            resp = stub.Search(search_pb2.SearchRequest(
                query=common_pb2.ImageInput(image_id=ids[q["query_url"]]),
                instruction=q["instruction"], k=k), timeout=30)
            targets = {ids[t] for t in q["target_urls"] if t in ids}
            print(f"\n  query: {q['query_url'].rsplit('/img/', 1)[-1]}  +  "
                  f"\"{q['instruction']}\"   ({q['relation']}, {origin})")
            for rank, hit in enumerate(resp.hits, 1):
                mark = "✓" if hit.image_id in targets else " "
                label = hit.context.alt_text or hit.context.caption or hit.image_url
                print(f"    {rank}. {mark} {hit.score:.3f}  {label[:70]}")
            examples.append({"image_id": ids[q["query_url"]], "instruction": q["instruction"],
                             "title": f"{q['relation'].replace('_', ' ')}: {q['instruction']}"})
    out = DATA / "demo"
    out.mkdir(parents=True, exist_ok=True)
    (out / "examples.json").write_text(json.dumps({"examples": examples}, indent=2))
    return examples


TEXT_EXAMPLES = 3


def step_text_examples(url: str, k: int = 5) -> None:
    """Text-to-image search through the real API: held-out images' alt texts as queries
    (✓ = an image of the same subject, from the corpus's ground truth)."""
    from trainer.eval.text_queries import subject

    ids = _pool_ids(url)
    held = [im for im in json.loads((CORPUS / "manifest.json").read_text())["images"]
            if im.get("split") == "heldout" and im["url"] in ids and im.get("alt")]
    subjects = {ids[im["url"]]: subject(im.get("truth") or {}, im.get("source", ""))
                for im in held}
    seen, chosen = set(), []
    for im in held:  # one per source: a flag, an emoji, a landmark, clip art ...
        if im.get("source") not in seen:
            seen.add(im.get("source"))
            chosen.append(im)
    with rpc.channel(ports.SEARCH_ADDR, role=auth.READ) as ch:
        stub = search_pb2_grpc.SearchServiceStub(ch)
        for im in chosen[:TEXT_EXAMPLES]:
            try:
                resp = stub.Search(search_pb2.SearchRequest(
                    query=common_pb2.ImageInput(), instruction=im["alt"], k=k), timeout=30)
            except grpc.RpcError as exc:
                say(f"text-only search: {exc.details()}")
                return
            want = subject(im.get("truth") or {}, im.get("source", ""))
            print(f"\n  text only: \"{im['alt']}\"")
            for rank, hit in enumerate(resp.hits, 1):
                mark = "✓" if subjects.get(hit.image_id) == want else " "
                label = hit.context.alt_text or hit.context.caption or hit.image_url
                print(f"    {rank}. {mark} {hit.score:.3f}  {label[:70]}")


def step_quality(model: dict) -> None:
    ckpt = model["checkpoint_uri"].removeprefix("file://")
    out = DATA / "demo" / "quality"
    say("evaluating on the held-out pages (trained model vs baselines) ...")
    run([sys.executable, "-m", "trainer.eval", "--checkpoint", ckpt, "--corpus", str(CORPUS),
         "--out", str(out)], "quality table")
    say(f"report: {out / 'report.md'} (plot: {out / 'metrics.png'})")


def step_seeds(url: str, model: dict, steps: int) -> None:
    """The served model is one seed; train the same configuration on the same frozen
    snapshot over 3 seeds so the numbers come with their spread."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT run_id FROM training_runs WHERE model_version = %s "
                           "ORDER BY created_at DESC LIMIT 1",
                           (model["model_version"],)).fetchone()
    snapshot = load_settings(TrainingSettings).runs_dir / row["run_id"] if row else None
    if snapshot is None or not (snapshot / "train.jsonl").is_file():
        say("seed spread skipped: the training run's snapshot is gone")
        return
    out = DATA / "demo" / "quality"
    say("the same configuration over 3 seeds on the run's snapshot "
        "(python -m trainer.experiments) ...")
    cmd = [sys.executable, "-m", "trainer.experiments", "--snapshot", str(snapshot),
           "--corpus", str(CORPUS), "--seeds", "3", "--out", str(DATA / "demo" / "experiments"),
           "--markdown", str(out / "seeds.md"), "--text-queries"]
    if steps:
        cmd += ["--steps", str(steps)]
    run(cmd, "seed spread")
    say(f"seed report: {out / 'seeds.md'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    ap.add_argument("--size", default=os.environ.get("MAGICLENS_DEMO_SIZE", "default"),
                    choices=["small", "medium", "default", "full"])
    ap.add_argument("--steps", type=int, default=int(os.environ.get("MAGICLENS_DEMO_STEPS",
                                                                    "0")),
                    help="fusion training steps (0 = the compact config's default)")
    args = ap.parse_args(argv)
    started = time.monotonic()
    try:
        url = step_infra()
        step_corpus(args.size)
        step_services()
        step_ingest(url)
        model = step_train(url, args.steps)
        step_index(url, model["model_version"])
        say("example queries through the search API (✓ = a ground-truth target):")
        step_examples(url)
        step_text_examples(url)
        print()
        step_quality(model)
        step_seeds(url, model, args.steps)
    except (DemoError, infra.InfraError) as exc:
        say(f"stopped: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; services keep running (./taskw down stops them)")
        return 130
    say(f"finished in {(time.monotonic() - started) / 60:.1f} min")
    say(f"web UI: {ports.GATEWAY_URL}  ·  CLI: .venv/bin/magiclens search --image ID "
        "--instruction TEXT  ·  stop everything: ./taskw down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
