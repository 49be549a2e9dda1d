"""The training worker: takes queued runs one at a time and runs the trainer on them.

One at a time, across replicas too: the worker holds a Postgres session advisory lock while
it is the active worker (others stand by). Because of that lock, a run found 'running' when
the lock is taken belongs to a dead worker.

Restart policy (resume, not restart): such a run is requeued (up to
MAGICLENS_TRAINING_MAX_ATTEMPTS starts, then failed). Its work folder is fixed by the run id
and keeps the data snapshot (the exported triples and images) and the trainer's Orbax
CheckpointManager state, so the requeued run continues from the last checkpoint on exactly
the same data, instead of starting over on a triple set that has since grown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pkgutil
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

import trainer.configs
from runtime import checkpoint_store, db, metrics
from runtime.blobstore import open_blobstore
from runtime.errors import UnavailableError
from services.training import store
from services.training.config import TrainingSettings
from services.training.progress import latest_checkpoint_step
from services.training.triples import PostgresTripleSource
from trainer.configs import get_config
from trainer.data.triples import JsonlTriples, read_captions
from trainer.models.magiclens import CONFIGS
from trainer.train import train

log = logging.getLogger(__name__)

TRAIN_STEP = metrics.gauge("magiclens_training_step", "Step the current training run reached")
TRAIN_LOSS = metrics.gauge("magiclens_training_loss", "Loss of the last training step")
TRAIN_STEPS = metrics.counter("magiclens_training_steps_total", "Training steps taken")
TRAIN_EXAMPLES = metrics.counter(
    "magiclens_training_examples_total", "Triples trained on (steps x batch size)")
TRAIN_STEP_SECONDS = metrics.histogram(
    "magiclens_training_step_seconds", "Wall time between two training steps",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
TRAIN_RUNS = metrics.counter(
    "magiclens_training_runs_total", "Training runs ended, by outcome (published, failed, "
    "interrupted, paused)", ["outcome"])


# Extra keyword arguments for trainer.train.train per config (tests pass a small backbone).
ModelKwargs = Callable[[Any], dict[str, Any]]
SERVICE_CONFIGS = ("compact",)  # configs the service can train from offline weights


class JobError(RuntimeError):
    """A run that cannot proceed, with a reason for the user."""


class Interrupted(Exception):
    """The worker is stopping: the job leaves the training loop after the current step."""


def available_configs() -> list[str]:
    """Config modules in trainer/configs (the trainer's own registry)."""

    return sorted(m.name for m in pkgutil.iter_modules(trainer.configs.__path__))


def model_of(config_name: str) -> str:
    """The MagicLens model a training config trains ("" for a name with no config module)."""
    if config_name not in available_configs():
        return ""
    return get_config(config_name).model


def resolve_config(config_name: str, steps: int, mode: str, checkpoint_every: int = 0) -> Any:
    """The trainer config for a request; raises ValueError for bad values."""
    overrides: dict[str, Any] = {}
    if steps:
        overrides["steps"] = steps
    if mode:
        overrides["mode"] = mode
    cfg = get_config(config_name, **overrides)
    if checkpoint_every:
        cfg = dataclasses.replace(cfg, checkpoint_every=checkpoint_every)
    elif cfg.checkpoint_every > cfg.steps:
        cfg = dataclasses.replace(cfg, checkpoint_every=max(1, cfg.steps))
    if cfg.mode not in ("frozen", "full"):
        raise ValueError(f"mode must be frozen or full, not {cfg.mode!r}")
    return cfg


class _Progress:
    """Writes step/loss to Postgres at most every `interval` seconds (own connection)."""

    def __init__(self, url: str, run_id: str, start: int, interval: float,
                 stop: threading.Event | None = None, batch_size: int = 0) -> None:
        self.url, self.run_id, self.step, self.interval = url, run_id, start, interval
        self.stop = stop
        self.batch_size = batch_size
        self._step_at: float | None = None
        self.loss: float | None = None
        self.losses: list[float] = []
        self._last = 0.0
        self._conn: psycopg.Connection | None = None

    def report(self, loss: float) -> None:
        self.step += 1
        self.loss = loss
        self.losses.append(loss)
        now = time.monotonic()
        if self._step_at is not None:
            TRAIN_STEP_SECONDS.observe(now - self._step_at)
        self._step_at = now
        TRAIN_STEP.set(self.step)
        TRAIN_LOSS.set(loss)
        TRAIN_STEPS.inc()
        TRAIN_EXAMPLES.inc(self.batch_size)
        if time.monotonic() - self._last >= self.interval:
            self.flush()
        if self.stop is not None and self.stop.is_set():
            self.flush()
            raise Interrupted(f"stopped at step {self.step}")

    def flush(self) -> None:
        self._last = time.monotonic()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(self.url, autocommit=True)
            store.set_progress(self._conn, self.run_id, self.step, self.loss)
        except (psycopg.Error, UnavailableError) as exc:  # progress is best effort
            log.warning("progress update failed", extra={"error": str(exc)})
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class TrainingWorker:
    def __init__(self, settings: TrainingSettings, model_kwargs: ModelKwargs | None = None,
                 configs: tuple[str, ...] = SERVICE_CONFIGS) -> None:
        self.settings = settings
        self.url = settings.database_url
        self.topic = store.models_topic(settings.training_models_topic)
        self.model_kwargs = model_kwargs or (lambda cfg: {})
        self.configs = configs
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.current: str | None = None
        self._lock_conn: psycopg.Connection | None = None

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def run(self) -> None:
        """Loop until stop(): take the next queued run, or wait for a poke / the poll tick."""
        while not self.stop_event.is_set():
            try:
                ran = self.tick()
            except (psycopg.Error, UnavailableError) as exc:
                log.warning("training worker: database unavailable", extra={"error": str(exc)})
                self._drop_lock()
                ran = False
            if not ran:
                self.wake.wait(self.settings.training_poll_s)
                self.wake.clear()
        self._drop_lock()

    def _drop_lock(self) -> None:
        if self._lock_conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._lock_conn.close()
        self._lock_conn = None

    def _ensure_lock(self) -> bool:
        """Hold the single-worker lock (a live session); False while another worker has it."""
        conn = self._lock_conn
        if conn is not None and not conn.closed:
            try:
                store.ping(conn)
                return True
            except psycopg.Error:
                self._drop_lock()
        conn = db.connect(self.url, autocommit=True)
        if not store.try_worker_lock(conn):
            conn.close()
            return False
        self._lock_conn = conn
        log.info("training worker active", extra={"worker": self.worker_id})
        return True

    def tick(self, stop_at: int | None = None) -> bool:
        """Recover orphaned runs, then run the oldest queued one; True if one ran."""
        if not self._ensure_lock():
            return False
        with db.transaction(self.url) as conn:
            recovered = store.recover_orphans(conn, self.settings.training_max_attempts)
        if recovered:
            log.warning("recovered interrupted training runs", extra={"runs": recovered})
        with db.transaction(self.url) as conn:
            run = store.claim_next(conn, self.worker_id)
        if run is None:
            return False
        self.execute(run, stop_at=stop_at)
        return True

    # ------------------------------------------------------------------ one job
    def execute(self, run: store.Run, stop_at: int | None = None) -> None:
        """Run one claimed job to its end: published, or failed with the reason.

        `stop_at` (as in the trainer) ends early after checkpointing and leaves the run
        'running', like a worker that died there (used to test resumption).
        """
        self.current = run.run_id
        workdir = self.settings.runs_dir / run.run_id
        started = time.monotonic()
        log.info("training run started", extra={"run_id": run.run_id, "attempt": run.attempts,
                                                "config": run.config_name})
        progress: _Progress | None = None
        try:
            init_version = run.params.get("init_version")
            if run.config_name not in self.configs and not init_version:
                raise JobError(f"config {run.config_name!r} cannot be trained by the service "
                               "without --init (its weights do not install offline)")
            cfg = resolve_config(run.config_name, run.params.get("steps", 0) or 0,
                                 run.params.get("mode", "") or "",
                                 self.settings.training_checkpoint_every)
            run = dataclasses.replace(run, total_steps=cfg.steps, mode=cfg.mode)
            init = self._init_weights(run, cfg) if init_version else None
            train_file, eval_file, data = self._snapshot(run, workdir)
            start = latest_checkpoint_step(workdir)
            with db.transaction(self.url) as conn:
                store.set_plan(conn, run.run_id, cfg.steps, cfg.mode, start)
                if start:
                    store.set_params(conn, run.run_id, resumed_from_step=start)
            progress = _Progress(self.url, run.run_id, start,
                                 self.settings.training_progress_interval_s, self.stop_event,
                                 batch_size=cfg.batch_size)
            result = self._train(cfg, train_file, eval_file, workdir, progress, stop_at, init)
            progress.flush()
            if stop_at is not None and stop_at < cfg.steps:
                log.info("training run paused", extra={"run_id": run.run_id, "step": stop_at})
                TRAIN_RUNS.labels("paused").inc()
                return
            self._publish(run, cfg, result, data, progress, init[1] if init else None)
            TRAIN_RUNS.labels("published").inc()
            log.info("training run published", extra={
                "run_id": run.run_id, "model_version": run.model_version,
                "seconds": round(time.monotonic() - started, 1)})
        except Interrupted as exc:  # shutdown: queue it again; it resumes from its checkpoint
            log.warning("training run interrupted by shutdown", extra={"run_id": run.run_id})
            TRAIN_RUNS.labels("interrupted").inc()
            with db.transaction(self.url) as conn:
                store.requeue(conn, run.run_id, f"interrupted by shutdown ({exc}); resumes "
                                                "from the last checkpoint")
        except Exception as exc:  # any failure is recorded on the run, never lost
            reason = str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
            log.exception("training run failed", extra={"run_id": run.run_id})
            TRAIN_RUNS.labels("failed").inc()
            with db.transaction(self.url) as conn:
                store.fail(conn, run.run_id, reason)
        finally:
            if progress is not None:
                progress.close()
            self.current = None

    def _init_weights(self, run: store.Run, cfg: Any) -> tuple[Any, Any]:
        """(params, architecture) of the version the run starts from (`train --init`),
        fetched from the blob store like serving fetches it, and restored with exact
        structure: the run's first step starts from exactly these weights."""
        from trainer.checkpoints import META_FILE, load_params
        from trainer.models.magiclens import abstract_params, build_model, config_for_checkpoint

        uri = run.params.get("init_uri") or ""
        local = checkpoint_store.fetch(uri, self.settings.init_cache_dir,
                                       open_blobstore(self.settings.blob_root))
        arch = config_for_checkpoint(json.loads((local / META_FILE).read_text()))
        want = CONFIGS[cfg.model]
        if (arch.backbone, arch.head) != (want.backbone, want.head):
            raise JobError(f"model version {run.params.get('init_version')} is a "
                           f"{arch.backbone}/{arch.head} model; config {run.config_name!r} "
                           f"trains {want.backbone}/{want.head}")
        kwargs = self.model_kwargs(cfg)
        model, pre = build_model(cfg.model, config=arch, backbone=kwargs.get("backbone"))
        params, _ = load_params(local, abstract_params(model, pre.image_size))
        log.info("training run starts from a model version", extra={
            "run_id": run.run_id, "init_version": run.params.get("init_version")})
        return params, arch

    def _snapshot(self, run: store.Run, workdir: Path) -> tuple[Path, Path | None, dict]:
        """Freeze the run's data on first start; a resumed run reuses the same snapshot."""
        meta_file = workdir / "snapshot.json"
        train_file, eval_file = workdir / "train.jsonl", workdir / "heldout.jsonl"
        if meta_file.exists():
            data = json.loads(meta_file.read_text())
            return train_file, eval_file if data["heldout"]["triples"] else None, data
        s = self.settings
        limits = dict(limit=s.training_max_triples, max_image_bytes=s.training_max_image_bytes,
                      max_image_pixels=s.training_max_image_pixels)
        train_src = PostgresTripleSource(self.url, s.blob_root, workdir / "images", "train",
                                         **limits)
        if len(train_src) < s.training_min_triples:
            raise JobError(f"only {len(train_src)} usable training triples (need at least "
                           f"{s.training_min_triples}); skipped: {dict(train_src.skipped)}")
        eval_src = PostgresTripleSource(self.url, s.blob_root, workdir / "images", "heldout",
                                        **limits)
        train_src.export(train_file)
        captions = train_src.export_captions(self.url, workdir / "captions.jsonl")
        if len(eval_src) >= 2:
            eval_src.export(eval_file)
        data = {"train": {**train_src.summary(), "captions": captions},
                "heldout": {**eval_src.summary(),
                            "triples": len(eval_src) if len(eval_src) >= 2 else 0}}
        tmp = meta_file.with_name(meta_file.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(meta_file)
        with db.transaction(self.url) as conn:
            store.set_params(conn, run.run_id, data=data)
        return train_file, eval_file if data["heldout"]["triples"] else None, data

    def _train(self, cfg: Any, train_file: Path, eval_file: Path | None, workdir: Path,
               progress: _Progress, stop_at: int | None,
               init: tuple[Any, Any] | None = None) -> Any:
        kwargs = dict(self.model_kwargs(cfg))
        if init is not None:
            kwargs["init_params"], kwargs["model_config"] = init
        if eval_file is not None:
            kwargs["eval_triples"] = JsonlTriples(eval_file)
        captions_file = workdir / "captions.jsonl"
        if captions_file.exists() and captions_file.stat().st_size and "captions" not in kwargs:
            kwargs["captions"] = read_captions(captions_file)
        if stop_at is not None:
            kwargs["stop_at"] = stop_at
        return train(cfg, JsonlTriples(train_file), workdir,
                     on_loss=lambda _step, loss: progress.report(loss), **kwargs)

    def _publish(self, run: store.Run, cfg: Any, result: Any, data: dict,
                 progress: _Progress, arch: Any = None) -> None:
        target = self.settings.models_dir / run.model_version
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a previous attempt died between the move and the commit
            shutil.rmtree(target)
        os.replace(result.checkpoint, target)
        # Other pods cannot read this pod's disk: with an object store the checkpoint goes
        # there first (checkpoint_store), so the event committed below never names a blob
        # that is not there yet.
        checkpoint_uri = checkpoint_store.publish(open_blobstore(self.settings.blob_root),
                                                  target, run.model_version)
        model_config = (arch or self.model_kwargs(cfg).get("model_config")
                        or CONFIGS[cfg.model])
        metrics = {k: float(v) for k, v in result.metrics.items()}
        metrics["data/train_triples"] = float(data["train"]["triples"])
        metrics["data/heldout_triples"] = float(data["heldout"]["triples"])
        config = {"train_config": dataclasses.asdict(cfg), "data": data,
                  "run_id": run.run_id}
        if run.params.get("init_version"):
            config["init_version"] = run.params["init_version"]
        final_loss = progress.losses[-1] if progress.losses else None
        with db.transaction(self.url) as conn:
            ok = store.publish(conn, self.topic, run, checkpoint_uri=checkpoint_uri,
                               config=config, metrics=metrics,
                               embed_dim=int(model_config.embed_dim), final_loss=final_loss)
        if not ok:  # someone else owns the run now: leave its state alone
            log.warning("run was taken over while training; result not published",
                        extra={"run_id": run.run_id})
