"""Released MagicLens checkpoints as first-class model versions, end to end against the real
services: a randomly initialised checkpoint written in the released format (a pickled
`flax.serialization.to_bytes(params)`, as `magic_lens_clip_{base,large}.pkl` are) is refused
by `magiclens models import` (never unpickled), converted with trainer.weights.released,
imported (model_versions row, checkpoint in the blob store, ModelPublished in the outbox),
promoted with `magiclens promote`, served by the real Triton server to the real embedding
worker, search root and ScaNN shard, and fine-tuned with `magiclens train --init`, whose
first step starts from exactly the imported weights.

Size: the released base tree is 166M parameters (a 666 MB file; a CLIP ViT-B/16 per image on
2 shared CPU cores). These tests use `clip_tiny`, the same tree — the same names, nesting and
head layout, CLIP's real tokenizer and vocabulary — at test size, through the same code path
(the service builds it from the same MagicLens/CLIP modules by config name). The base tree
itself is checked by the refusal test: a tiny file imported as `base` is refused leaf by leaf
against base's real (abstract) tree.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import grpc
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization, traverse_util
from magiclens.v1 import common_pb2, events_pb2, search_pb2, search_pb2_grpc, training_pb2

from runtime import db
from runtime.blobstore import open_blobstore
from runtime.bus import ensure_topics
from runtime.config import load_settings
from runtime.grpc_server import GrpcServer
from services.embedding.config import WorkerSettings
from services.embedding.model import load_checkpoint
from services.embedding.worker import Worker
from services.training import client
from services.training.config import TrainingSettings
from services.training.server import TrainingServicer, registration
from services.training.worker import TrainingWorker
from tests.serving.serving_support import running_triton
from tests.support.processes import ROOT, free_port, start, stop, wait_for, wait_grpc
from tests.training.training_fixtures import compilation_cache, drop_database, fresh_database, seed
from tools.cli.errors import EXIT_FAILED, EXIT_USAGE
from tools.cli.main import main as cli
from trainer.checkpoints import load_params, save_params
from trainer.models.magiclens import abstract_params, arch_meta, build_model, init_params
from trainer.weights.released import main as convert
from trainer.weights.released import save_released_format

CONFIG = "clip_tiny"


def released_checkpoint(path: Path, seed: int) -> dict:
    """A randomly initialised MagicLens in the released file format (pickled to_bytes payload)
    with the exact param tree of CONFIG; returns the params. The seed differs from the
    trainer's own init seed, so starting from these weights cannot happen by accident."""
    model, pre = build_model(CONFIG)
    params = jax.device_get(init_params(model, jax.random.PRNGKey(seed), pre.image_size))
    save_released_format(params, path)
    return params


def flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(
        serialization.to_state_dict(tree), sep="/").items()}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("magiclens: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def stack(infra_servers, tmp_path_factory):
    """The real training service (gRPC, in this process, its worker driven by the tests),
    a fresh database seeded with pages, images and triples, and the CLI pointed at it."""
    name = f"released_{uuid.uuid4().hex[:8]}"
    url = fresh_database(infra_servers.database_url, name)
    d = tmp_path_factory.mktemp("released")
    topic = f"test.models.{name}"
    settings = load_settings(TrainingSettings, database_url=url,
                             kafka_bootstrap_servers=infra_servers.kafka_bootstrap,
                             data_dir=d / "training-pod", blob_uri=f"file://{d / 'blobs'}",
                             training_models_topic=topic, training_progress_interval_s=0,
                             training_checkpoint_every=1)
    seeded = seed(url, open_blobstore(settings.blob_root), name)
    worker = TrainingWorker(settings)
    server = GrpcServer([registration(TrainingServicer(settings, worker))], port=0)
    port = server.start()
    files = d / "files"
    files.mkdir()
    pkl = files / "magic_lens_clip_tiny.pkl"
    params = released_checkpoint(pkl, seed=1234)
    mp = pytest.MonkeyPatch()
    mp.setenv("MAGICLENS_TRAINING_ADDR", f"127.0.0.1:{port}")
    mp.setenv("MAGICLENS_RPC_TIMEOUT_S", "120")
    with compilation_cache(d / "jax_cache"):
        yield SimpleNamespace(url=url, settings=settings, worker=worker, dir=d, pkl=pkl,
                              params=params, seeded=seeded, infra=infra_servers,
                              stub=client.stub(f"127.0.0.1:{port}"), topic=topic,
                              version=f"released-{uuid.uuid4().hex[:6]}")
    mp.undo()
    worker.stop()
    server.stop(1)
    drop_database(infra_servers.database_url, name)


@pytest.fixture(scope="module")
def imported(stack):
    """The .pkl converted once (the documented command) and imported through the CLI."""
    msgpack = stack.dir / "files" / "magic_lens_clip_tiny.msgpack"
    convert([str(stack.pkl), "--config", CONFIG, "--msgpack", str(msgpack)])
    assert cli(["models", "import", str(msgpack), "--config", CONFIG,
                "--name", stack.version, "--json"]) == 0
    return msgpack


def _versions(url: str) -> dict[str, dict]:
    with db.connect(url) as conn:
        return {r["model_version"]: r for r in conn.execute("SELECT * FROM model_versions")}


def _upload(stack, data: bytes, **header) -> grpc.RpcError:
    """An ImportModel call as another client would make it (1 MiB chunks); its error."""
    fields = dict(config_name=CONFIG, file_name="x.msgpack", total_bytes=len(data))
    fields.update(header)
    step = 1 << 20
    chunks = [training_pb2.ImportModelChunk(**fields, data=data[:step])] + [
        training_pb2.ImportModelChunk(data=data[i:i + step]) for i in range(step, len(data), step)]
    with pytest.raises(grpc.RpcError) as exc:
        stack.stub.ImportModel(iter(chunks), timeout=120)
    return exc.value


def test_import_refuses_pickles_other_trees_and_bad_uploads(stack, capsys):
    before = set(_versions(stack.url))
    # The released .pkl: refused by the CLI before uploading, with the convert command.
    assert cli(["models", "import", str(stack.pkl), "--config", CONFIG]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "is a pickle" in line and "never unpickles" in line
    assert f"python -m trainer.weights.released {stack.pkl} --config {CONFIG} --msgpack" in line
    # The service refuses it too, whatever the file is called (another client).
    err = _upload(stack, stack.pkl.read_bytes())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "is a pickle" in err.details()

    payload = serialization.to_bytes(stack.params)
    # The right format with base's tree expected: refused against base's real tree.
    err = _upload(stack, payload, config_name="base")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a base MagicLens checkpoint" in err.details()
    # One leaf missing, one leaf of the wrong shape.
    tree = flat(stack.params)
    missing = dict(tree)
    missing.pop("contrastive_multimodal_pooler/pool_attn_ln/scale")
    err = _upload(stack, serialization.msgpack_serialize(traverse_util.unflatten_dict(
        missing, sep="/")))
    assert "missing ['contrastive_multimodal_pooler/pool_attn_ln/scale']" in err.details()
    wrong = dict(tree, **{"multimodal_encoder/x_layers_0/layer_norm/scale": np.zeros(7)})
    err = _upload(stack, serialization.msgpack_serialize(traverse_util.unflatten_dict(
        wrong, sep="/")))
    assert "x_layers_0/layer_norm/scale: file has (7,)" in err.details()
    # Not msgpack; a truncated upload; a checksum that does not match; over the size limit.
    assert "not a flax msgpack" in _upload(stack, b"PK\x03\x04" + b"\0" * 100).details()
    assert "ended at" in _upload(stack, payload[:1000], total_bytes=len(payload)).details()
    assert "sha256 mismatch" in _upload(stack, payload, sha256="0" * 64).details()
    err = _upload(stack, payload[:100], total_bytes=stack.settings.training_max_import_bytes + 1)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "the limit is" in err.details()
    assert "config must be one of base, large" in _upload(
        stack, payload, config_name="compact").details()
    # Nothing refused left a model version behind.
    assert set(_versions(stack.url)) == before


def test_an_imported_checkpoint_is_registered_promoted_served_and_searched(
        stack, imported, capsys, tmp_path):
    capsys.readouterr()
    v = stack.version
    row = _versions(stack.url)[v]
    assert (row["status"], row["config_name"], row["embed_dim"]) == ("published", CONFIG, 32)
    assert row["config"]["import"]["file"] == imported.name
    ckpt = Path(row["checkpoint_uri"].removeprefix("file://"))
    assert ckpt == stack.settings.models_dir / v
    with db.connect(stack.url) as conn:
        events = [events_pb2.ModelPublished.FromString(bytes(r["payload"])) for r in
                  conn.execute("SELECT payload FROM outbox WHERE topic = %s AND msg_key = %s",
                               (stack.topic, v))]
    assert [(e.model_version, e.promoted, e.embed_dim) for e in events] == [(v, False, 32)]
    # What was stored is exactly the file's weights, with the architecture recorded.
    model, pre = build_model(CONFIG)
    stored, meta = load_params(ckpt, abstract_params(model, pre.image_size))
    assert meta["arch"] == arch_meta(model.config)["arch"] and meta["origin"] == "import"
    want, got = flat(stack.params), flat(stored)
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    # The same name twice: refused, the first import untouched.
    assert cli(["models", "import", str(imported), "--config", CONFIG, "--name", v]) \
        == EXIT_FAILED
    assert "already exists" in one_line(capsys.readouterr().err)
    assert cli(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["models"]
    assert {m["model_version"]: m["status"] for m in listed}[v] == "published"

    # Serving: a Triton server that serves another version first, the embedding worker,
    # a search shard and the root, all real; `magiclens promote` switches them to it.
    d = stack.dir / "serving"
    first = save_params(d / "first", jax.device_get(init_params(
        model, jax.random.PRNGKey(5), pre.image_size)),
        {"config": CONFIG, "model_version": "serving-a", **arch_meta(model.config)})
    tag = uuid.uuid4().hex[:8]
    (d / "triton").mkdir()
    with running_triton(first, d / "triton") as triton:
        wset = load_settings(
            WorkerSettings, database_url=stack.url, kafka_bootstrap_servers=stack.infra.
            kafka_bootstrap, triton_url=triton.url, current_model_file=triton.current,
            data_dir=d / "embedding-pod", blob_uri=stack.settings.blob_uri,
            reconcile_interval_s=1, embedding_group=f"test-released-{tag}",
            embedding_images_topic=f"test.{tag}.images", embedding_models_topic=stack.topic,
            embedding_ready_topic=f"test.{tag}.ready")
        worker = Worker(wset)
        ensure_topics(stack.infra.kafka_bootstrap, worker.topics)
        assert cli(["promote", v]) == 0
        assert f"model {v} is now promoted" in capsys.readouterr().out
        with _consuming(worker):
            live = wait_for(lambda: _embedded(stack.url, v), 240,
                            "the pool to be embedded by the imported version")
        env = stack.infra.env(
            DATABASE_URL=stack.url, MAGICLENS_DATA_DIR=str(d / "search"),
            MAGICLENS_BLOB_URI=stack.settings.blob_uri, MAGICLENS_SYNC_INTERVAL_S="1",
            PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}")
        shard_port, root_port = free_port(), free_port()
        procs = [start("services.search.shard", "--index", tag, "--num-shards", "1",
                       "--shard", "0", env=dict(env, MAGICLENS_GRPC_PORT=str(shard_port)),
                       log=d / "shard.log")]
        try:
            wait_grpc(shard_port, proc=procs[0], log=d / "shard.log")
            procs.append(start("services.search.root", env=dict(
                env, MAGICLENS_GRPC_PORT=str(root_port), MAGICLENS_TRITON_URL=triton.url,
                MAGICLENS_SHARDS=f"127.0.0.1:{shard_port}"), log=d / "root.log"))
            stub = search_pb2_grpc.SearchServiceStub(
                wait_grpc(root_port, proc=procs[1], log=d / "root.log"))
            query = min(live)

            def searched():
                r = stub.Search(search_pb2.SearchRequest(
                    query=common_pb2.ImageInput(image_id=query), instruction="", k=5),
                    timeout=30)
                return r if r.model_version == v and len(r.hits) == 5 else None

            r = wait_for(searched, 120, "search to answer with the imported version")
            # The vectors Triton made for the pool (through the worker) and the hits are the
            # imported weights' own: computed here from the stored checkpoint.
            loaded = load_checkpoint(ckpt, v)
            blobs = open_blobstore(stack.settings.blob_root)
            with db.connect(stack.url) as conn:
                rows = {i["image_id"]: i for i in conn.execute(
                    "SELECT i.image_id, i.blob_uri, e.embedding FROM images i JOIN "
                    "image_embeddings e ON e.image_id = i.image_id AND e.model_version = %s "
                    "WHERE i.image_id = ANY(%s)", (v, live))}
            ids = sorted(live)
            pool = loaded.encode_target([blobs.get(rows[i]["blob_uri"]) for i in ids])
            served = np.stack([np.frombuffer(bytes(rows[i]["embedding"]), "<f4") for i in ids])
            np.testing.assert_allclose(served, pool, atol=1e-5, rtol=0)
            q = loaded.encode_query([blobs.get(rows[query]["blob_uri"])], [""])[0]
            scores = {i: float(pool[n] @ q) for n, i in enumerate(ids) if i != query}
            got = [h.image_id for h in r.hits]
            assert got == sorted(scores, key=scores.get, reverse=True)[:5]
            np.testing.assert_allclose([h.score for h in r.hits], [scores[i] for i in got],
                                       atol=1e-4)
        finally:
            for p in procs:
                stop(p)


def test_train_init_starts_from_the_imported_weights_and_publishes(stack, imported, capsys):
    capsys.readouterr()
    v = stack.version
    # base without --init: its weights do not install offline; the error says what to do.
    assert cli(["train", "--config", "base"]) == EXIT_FAILED
    assert "magiclens models import FILE --config base" in one_line(capsys.readouterr().err)
    # --init with a config of another model, and with an unknown version.
    assert cli(["train", "--config", "compact", "--init", v]) == EXIT_USAGE
    assert f"{v} is a clip_tiny model" in one_line(capsys.readouterr().err)
    assert cli(["train", "--init", "no-such-version"]) == EXIT_FAILED
    assert "no model version" in one_line(capsys.readouterr().err)

    assert cli(["train", "--init", v, "--steps", "3", "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["status"] == "queued"
    # Step 1 only (stop_at, then resumed like a restarted worker): the warm-up schedule starts
    # at learning rate 0, so what step 1 saved is what the run started from.
    assert stack.worker.tick(stop_at=1)
    ckpts = stack.settings.runs_dir / run["run_id"] / "checkpoints"
    with ocp.CheckpointManager(ckpts.absolute()) as mngr:
        assert mngr.latest_step() == 1
        saved = mngr.restore(1, args=ocp.args.StandardRestore())
    first = flat(saved["trainable"]["model"])
    want = flat(stack.params)
    assert first and all(k in want for k in first)
    for k, a in first.items():
        np.testing.assert_array_equal(a, want[k], err_msg=k)
    assert {"multimodal_encoder", "contrastive_multimodal_pooler"} <= {
        k.split("/")[0] for k in first}  # the head trains (frozen mode: the towers do not)

    assert stack.worker.tick()  # resumes from step 1, finishes and publishes
    r = client.get_run(run["run_id"], stack.stub)
    assert (r.status, r.step, r.total_steps) == ("succeeded", 3, 3), r.reason
    row = _versions(stack.url)[r.model_version]
    assert (row["status"], row["config_name"]) == ("published", CONFIG)
    assert row["config"]["init_version"] == v
    model, pre = build_model(CONFIG)
    out, meta = load_params(Path(row["checkpoint_uri"].removeprefix("file://")),
                            abstract_params(model, pre.image_size))
    assert meta["arch"]["backbone"] == "clip_tiny"
    got = flat(out)
    frozen = [k for k in want if k not in first]
    assert frozen and all(np.array_equal(got[k], want[k]) for k in frozen)  # kept as imported
    assert any(not np.array_equal(got[k], want[k]) for k in first)  # the head trained


@pytest.mark.slow
def test_a_base_size_checkpoint_imports_against_the_real_base_tree(stack, capsys):
    """The real base tree at full size (166M parameters, 666 MB): every leaf name and shape of
    the released base, random values, through the same import."""
    model, pre = build_model("base")
    shapes = traverse_util.flatten_dict(abstract_params(model, pre.image_size), sep="/")
    rng = np.random.default_rng(0)
    tree = {k: rng.standard_normal(s.shape, dtype=np.float32) for k, s in shapes.items()}
    assert sum(a.size for a in tree.values()) == 166_433_025
    path = stack.dir / "files" / "magic_lens_clip_base.msgpack"
    path.write_bytes(serialization.msgpack_serialize(traverse_util.unflatten_dict(tree, sep="/")))
    name = f"base-{uuid.uuid4().hex[:6]}"
    capsys.readouterr()
    assert cli(["models", "import", str(path), "--config", "base", "--name", name]) == 0
    assert f"imported {path.name} as model {name} (config base, published)" in \
        capsys.readouterr().out
    path.unlink()
    row = _versions(stack.url)[name]
    assert (row["status"], row["config_name"], row["embed_dim"]) == ("published", "base", 512)
    stored, meta = load_params(Path(row["checkpoint_uri"].removeprefix("file://")))
    assert meta["arch"]["backbone"] == "clip_b16"
    got = flat(stored)
    assert got.keys() == tree.keys()
    for k in ("clip/visual/conv1/kernel", "multimodal_encoder/x_layers_3/ff_layer/ffn_layer2/"
              "linear/w", "contrastive_multimodal_pooler/pool_attn/per_dim_scale/per_dim_scale"):
        np.testing.assert_array_equal(got[k], tree[k])


# ------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _consuming(worker: Worker):
    """The embedding worker's real consumer loop (Kafka + reconciler) in a thread."""
    consumer = worker.consumer()
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    try:
        yield
    finally:
        consumer.stop()
        t.join(60)


def _embedded(url: str, version: str) -> list[int] | None:
    """The live pool's image ids once every one has a vector of `version` (else None)."""
    with db.connect(url) as conn:
        rows = conn.execute(
            "SELECT i.image_id, e.image_id IS NOT NULL AS done FROM images i "
            "LEFT JOIN image_embeddings e ON e.image_id = i.image_id AND e.model_version = %s "
            "WHERE i.status NOT IN ('rejected', 'deleted')", (version,)).fetchall()
    return [r["image_id"] for r in rows] if rows and all(r["done"] for r in rows) else None
