"""The embedding server: MagicLens `query` and `target` encoders on Triton (PyTriton).

Runs in `.venv-triton` (PyTriton needs numpy<2):
    .venv-triton/bin/python -m services.embedding.server [--current-file F | --checkpoint DIR]

Why this shape:
- Triton's dynamic batcher groups concurrent requests; the infer function receives them as a
  list and runs one batch per model version, cut into jitted bucket sizes (see
  model.BATCH_BUCKETS); instructions' text features come from a per-version cache.
- The served version comes from a small JSON file (`{"model_version", "checkpoint"}`) that the
  embedding worker (main env, which reads the registry in Postgres) writes atomically when a
  ModelPublished event promotes a version. The server polls it, loads the new params beside the
  old ones and swaps a reference under a lock: a batch already running keeps the params it
  started with, so a swap fails no request. The previous version stays loaded so the search
  root can keep embedding queries in the space the shards still serve (blue/green), selected
  per request with the Triton request parameter `model_version`.
- Shutdown goes through PyTriton and then reaps any tritonserver/backend children left behind.
- Crashes heal under a supervisor (tools/keeper.py, or the pod's restart policy): when the
  tritonserver child dies the process exits 1 instead of idling with nothing serving, and a
  server that starts cleans what a SIGKILLed predecessor on the same port left behind (its
  PyTriton workspace, the Python backend's shared memory, Triton's model copies in /tmp),
  see `Workspace`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import sysconfig
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from runtime import ports, tracing
from services.embedding.current import read_current, write_current
from services.embedding.model import BATCH_BUCKETS, BadInput, LoadedModel, load_checkpoint

log = logging.getLogger("embedding-server")

QUERY_MODEL = "query"
TARGET_MODEL = "target"
TEXT_QUERY_MODEL = "text_query"  # text-only queries: `instruction` in, no image
VERSION_PARAM = "model_version"


class ModelNotLoadedError(LookupError):
    """The request pins a version this server has not loaded (yet): not the input's fault.
    Clients recognise it by this class name in the error (runtime/embedding_client.py)."""


class ModelHolder:
    """The loaded versions (newest last) and which one serves by default."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self.current: str = ""

    def install(self, model: LoadedModel) -> None:
        with self._lock:
            self._models[model.model_version] = model
            self._models.move_to_end(model.model_version)
            while len(self._models) > self.keep:
                self._models.popitem(last=False)
            self.current = model.model_version

    def get(self, version: str = "") -> LoadedModel:
        with self._lock:
            if not self._models:
                raise RuntimeError("no model loaded yet")
            key = version or self.current
            if key not in self._models:
                raise ModelNotLoadedError(f"model version {key!r} is not loaded "
                               f"(loaded: {', '.join(self._models)})")
            return self._models[key]

    def versions(self) -> list[str]:
        with self._lock:
            return list(self._models)


class Watcher(threading.Thread):
    """Polls the current-model file; loads and swaps in a new version when it changes."""

    def __init__(self, path: Path, holder: ModelHolder, stop: threading.Event,
                 interval_s: float = 0.5) -> None:
        super().__init__(name="model-watcher", daemon=True)
        self.path, self.holder, self.stop, self.interval_s = path, holder, stop, interval_s

    def load_now(self) -> bool:
        cur = read_current(self.path)
        if cur is None or cur[0] == self.holder.current:
            return False
        version, ckpt = cur
        t0 = time.monotonic()
        try:
            fresh = load_checkpoint(ckpt, version)
        except Exception:
            log.exception("could not load model version %s from %s", version, ckpt)
            return False
        try:
            old = self.holder.get()
            model = (old.with_params(version, fresh.params)
                     if old.model.config == fresh.model.config else fresh)
        except RuntimeError:
            model = fresh
        model.warmup()
        self.holder.install(model)
        log.info("serving model version %s (loaded in %.1fs; image tower on %s)", version,
                 time.monotonic() - t0, model.image_runtime_used)
        if model.ready != set(BATCH_BUCKETS):  # a new config: compile its batch sizes
            threading.Thread(target=self._warm_rest, args=(model,), name="warm-batches",
                             daemon=True).start()
        return True

    @staticmethod
    def _warm_rest(model: LoadedModel) -> None:
        t0 = time.monotonic()
        model.warm_rest()
        log.info("compiled batch sizes %s in %.1fs", sorted(model.ready),
                 time.monotonic() - t0)

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.load_now()


def _row_bytes(x: np.ndarray) -> bytes:
    v = x.reshape(-1)[0]
    return v if isinstance(v, bytes) else bytes(v)


def _parameter(req, name: str) -> str:
    params = getattr(req, "parameters", None) or {}
    return str(params.get(name, "") or "")


def _version_of(req) -> str:
    return _parameter(req, VERSION_PARAM)


def make_infer(holder: ModelHolder, kind: str):
    """An infer function over a list of Triton requests (one jitted batch per version)."""

    def infer(requests):
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(_version_of(req), []).append(i)
        results: list[dict[str, np.ndarray] | None] = [None] * len(requests)
        for version, idx in groups.items():
            # The batch's spans join the trace of its first request (the others' traces end
            # at their Triton call); off unless tracing is configured.
            parent = tracing.context_from_traceparent(
                _parameter(requests[idx[0]], tracing.TRITON_PARAMETER))
            with tracing.span(f"embed {kind} batch", context=parent, requests=len(idx)):
                _infer_group(requests, idx, version, results)
        return results

    def _infer_group(requests, idx: list[int], version: str, results: list) -> None:
        model = holder.get(version)  # one reference for the whole batch: swap-safe
        if kind == TEXT_QUERY_MODEL:
            _infer_text(requests, idx, model, results)
            return
        pixels, texts, sizes = [], [], []
        with tracing.span("decode + preprocess"):
            for i in idx:
                req = requests[i]
                if "image" in req.data:
                    px = model.preprocess_images([_row_bytes(r) for r in req["image"]])
                elif "pixels" in req.data:
                    px = np.asarray(req["pixels"], np.float32)
                    s = model.image_size
                    if px.shape[1:] != (s, s, 3):
                        raise BadInput(f"pixels must be [B,{s},{s},3]")
                else:
                    raise BadInput("give `image` (encoded bytes) or `pixels`")
                pixels.append(px)
                sizes.append(px.shape[0])
                if kind == QUERY_MODEL:
                    if "instruction" in req.data:
                        got = [_row_bytes(r).decode("utf-8") for r in req["instruction"]]
                    else:
                        got = [""] * px.shape[0]
                    if len(got) != px.shape[0]:
                        raise BadInput("one instruction per image")
                    model.tokens(got)  # validates length before anything runs
                    texts += got
        x = np.concatenate(pixels)
        if kind == QUERY_MODEL:
            with tracing.span("text tower (uncached instructions)"):
                text_features = model.text_features(texts)
            with tracing.span("image tower", images=len(x), runtime=model.image_runtime_used):
                image_features = model.image_features(x)
            with tracing.span("head"):
                emb = model.query_from_features(image_features, text_features)
        else:
            with tracing.span("image tower + target head", images=len(x)):
                emb = model.encode_target_pixels(x)
        _scatter(results, idx, sizes, emb, model)

    return infer


def _scatter(results: list, idx: list[int], sizes: list[int], emb: np.ndarray,
             model: LoadedModel) -> None:
    """Give each request of the batch its rows of `emb` and the version that made them."""
    start = 0
    for i, n in zip(idx, sizes, strict=True):
        results[i] = {"embedding": emb[start:start + n],
                      "model_version": np.array([[model.model_version.encode()]] * n,
                                                dtype=np.object_)}
        start += n


def _infer_text(requests, idx: list[int], model: LoadedModel, results: list) -> None:
    """Text-only queries: the text tower (cached) and the text-query head, no image."""
    texts, sizes = [], []
    for i in idx:
        if "instruction" not in requests[i].data:
            raise BadInput("give `instruction`")
        got = [_row_bytes(r).decode("utf-8") for r in requests[i]["instruction"]]
        texts += got
        sizes.append(len(got))
    with tracing.span("text tower + text-query head", queries=len(texts)):
        emb = model.encode_text_queries(texts)
    _scatter(results, idx, sizes, emb, model)


def _children(pid: int) -> list[int]:
    """Descendant pids of `pid` (from /proc), deepest last."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def reap_children(timeout_s: float = 5.0) -> int:
    """Terminate descendants PyTriton left running (tritonserver, python backend stubs)."""
    pids = _children(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = [p for p in pids if _alive(p)]
            if not alive:
                return len(pids)
            time.sleep(0.1)
        pids = alive
    return len(pids)


def _alive(pid: int) -> bool:
    """Running (a zombie, or a pid /proc does not show, is not)."""
    return "(Z)" not in _state(pid)


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return "(" + stat.rsplit(")", 1)[1].split()[0] + ")"
    except OSError:
        return "(Z)"


SHM_DIR = Path("/dev/shm")
# Triton writes the files of a model loaded with its config and files inline (PyTriton's
# proxy models) to mkdtemp("/tmp/folderXXXXXX") (a fixed /tmp, not TMPDIR); the Python
# backend stubs run them from there. Their config names the PyTriton workspace.
TRITON_TMP = Path("/tmp")


class Workspace:
    """This server's PyTriton workspace at a fixed path per gRPC port, and cleaning what a
    SIGKILLed server left there and outside it, so a server that starts after a crash does.

    Why: PyTriton's default workspace is a random directory under ~/.cache/pytriton that only
    a clean stop removes (~22 MB: a copy of tritonserver and the model store); the Python
    backend's shared memory (`/dev/shm/pytrtion<pid>-*`, 4 MB per model) and Triton's copies
    of the proxy models (`/tmp/folderXXXXXX`, whose config names the workspace) also outlive
    a killed server. A supervisor restarts a crashed server with back-off, so each crash would
    leave all of that behind.

    `<path>.lock` is flock-ed for the life of the process (the kernel drops it when the
    process dies, however it dies), so a server never cleans up after one that still runs;
    `<path>.json` records the owner's pid (the shared memory's names carry it)."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.record = self.path.with_name(self.path.name + ".json")
        self._lock_file = None

    def claim(self) -> list[str]:
        """Take the workspace; remove what a previous owner left. Returns what was removed.
        SystemExit(1) while another live server holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115 - held
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SystemExit(f"embedding-server: another server uses {self.path}") from None
        self._lock_file = lock
        removed = []
        try:
            pid = json.loads(self.record.read_text()).get("pid")
        except (OSError, ValueError, AttributeError):
            pid = None
        if isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
            for seg in SHM_DIR.glob(f"pytrtion{pid}-*"):  # PyTriton's prefix (sic)
                with contextlib.suppress(OSError):
                    seg.unlink()
                    removed.append(str(seg))
        for d in self.triton_copies():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
            removed.append(str(self.path))
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid()}))
        tmp.replace(self.record)
        return removed

    def triton_copies(self) -> list[Path]:
        """Triton's /tmp copies of the models of a server with this workspace."""
        needle = f'string_value: "{self.path.resolve()}"'.encode()
        found = []
        for d in TRITON_TMP.glob("folder??????"):
            with contextlib.suppress(OSError):
                if needle in (d / "config.pbtxt").read_bytes():
                    found.append(d)
        return sorted(found)

    def release(self) -> None:
        """After a clean stop (PyTriton removed the workspace and Triton its copies)."""
        with contextlib.suppress(OSError):
            self.record.unlink()


def default_workspace(grpc_port: int) -> Path:
    home = Path(os.environ.get("PYTRITON_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytriton")
    return home / f"magiclens-{grpc_port}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--current-file", type=Path,
                    default=Path(os.environ.get("MAGICLENS_DATA_DIR", "data"))
                    / "serving" / "current_model.json")
    ap.add_argument("--checkpoint", help="serve this checkpoint (writes the current-file)")
    ap.add_argument("--model-version", default="")
    ap.add_argument("--grpc-port", type=int,
                    default=int(os.environ.get("TRITON_GRPC_PORT", ports.TRITON.grpc)))
    ap.add_argument("--http-port", type=int,
                    default=int(os.environ.get("TRITON_HTTP_PORT", ports.TRITON.http)))
    ap.add_argument("--metrics-port", type=int,
                    default=int(os.environ.get("TRITON_METRICS_PORT", ports.TRITON.metrics)))
    ap.add_argument("--host", default=os.environ.get("MAGICLENS_TRITON_HOST", "127.0.0.1"),
                    help="interface to bind (0.0.0.0 in a pod)")
    ap.add_argument("--workspace", type=Path, default=None,
                    help="PyTriton workspace (default ~/.cache/pytriton/magiclens-GRPC_PORT); "
                         "what a killed server left there is removed at start")
    ap.add_argument("--max-batch", type=int, default=16)
    # Requests that queue while a batch runs are batched whatever this is; waiting longer
    # for company only delays a lone request (2 ms cost 2.5 ms per call on an echo model).
    ap.add_argument("--queue-delay-us", type=int, default=100)
    args = ap.parse_args(argv)
    # force: an import (JAX) has configured the root logger already, which made this a no-op
    # and dropped every INFO line ("ready", "serving model version").
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format='{"ts":"%(asctime)s","service":"embedding-server",'
                               '"level":"%(levelname)s","msg":"%(message)s"}')
    # The bundled Python backend must load the libpython of *this* interpreter.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = libdir + (":" + os.environ["LD_LIBRARY_PATH"]
                                              if os.environ.get("LD_LIBRARY_PATH") else "")
    # PyTriton exists only in .venv-triton (numpy<2). The main environment imports this module
    # for ModelHolder/Watcher (tests, the pod hand-off check) and never runs main().
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    tracing.setup("embedding-server")  # off unless OTEL_EXPORTER_OTLP_ENDPOINT is set
    if args.checkpoint:
        write_current(args.current_file, args.model_version or Path(args.checkpoint).name,
                      str(Path(args.checkpoint).absolute()))
    holder = ModelHolder()
    stop = threading.Event()
    watcher = Watcher(args.current_file, holder, stop)
    if not watcher.load_now():
        # No model promoted yet (a fresh install): wait for one instead of crash-looping.
        print(f"embedding-server: waiting for a promoted model in {args.current_file}",
              file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not watcher.load_now():
                if stop.wait(2.0):
                    return 0
        except KeyboardInterrupt:
            return 0
    size = holder.get().image_size
    config = ModelConfig(max_batch_size=args.max_batch, batcher=DynamicBatcher(
        max_queue_delay_microseconds=args.queue_delay_us))
    image_in = [Tensor(name="image", dtype=np.bytes_, shape=(1,), optional=True),
                Tensor(name="pixels", dtype=np.float32, shape=(size, size, 3), optional=True)]
    outputs = [Tensor(name="embedding", dtype=np.float32, shape=(-1,)),
               Tensor(name="model_version", dtype=np.bytes_, shape=(1,))]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workspace = Workspace(args.workspace or default_workspace(args.grpc_port))
    removed = workspace.claim()
    if removed:
        log.warning("removed what a killed server left: %s", ", ".join(removed))
    triton = Triton(workspace=workspace.path,
                    config=TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port,
                                        metrics_port=args.metrics_port, grpc_address=args.host,
                                        http_address=args.host, exit_timeout_secs=5))
    code = 0
    try:
        triton.bind(QUERY_MODEL, make_infer(holder, QUERY_MODEL), [
            *image_in, Tensor(name="instruction", dtype=np.bytes_, shape=(1,), optional=True)],
            outputs, config=config)
        triton.bind(TARGET_MODEL, make_infer(holder, TARGET_MODEL), image_in, outputs,
                    config=config)
        triton.bind(TEXT_QUERY_MODEL, make_infer(holder, TEXT_QUERY_MODEL), [
            Tensor(name="instruction", dtype=np.bytes_, shape=(1,))], outputs, config=config)
        starting = threading.Event()
        threading.Thread(target=_watch_startup, args=(triton, starting), daemon=True,
                         name="startup-watchdog").start()
        try:
            triton.run()
        finally:
            starting.set()
        watcher.start()
        log.info("ready: grpc %d http %d, model %s", args.grpc_port, args.http_port,
                 holder.current)
        # PyTriton notices a dead tritonserver (or backend stub) and stops itself, but this
        # process would idle on, serving nothing, with its supervisor seeing it "running".
        while not stop.wait(1.0):
            if not _triton_alive(triton):
                log.error("tritonserver is gone; exiting so that the supervisor restarts us")
                code = 1
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        try:
            triton.stop()
        finally:
            left = reap_children()
            if code == 0:  # else shared memory may be left: the next server cleans it
                workspace.release()
            log.info("stopped (reaped %d leftover processes)", left)
    return code


def _watch_startup(triton: Any, started: threading.Event) -> None:
    """Exit at once if tritonserver dies while PyTriton loads the models.

    PyTriton's loader would otherwise wait out its HTTP timeout (60 s) on a server that is
    gone and then raise; the supervisor restarts a process that exits, so exit now."""
    seen = False
    while not started.wait(0.2):
        server = getattr(triton, "_triton_server", None)  # PyTriton's handle, set by run()
        launched = seen or getattr(server, "_tritonserver_running_cmd", None) is not None
        alive = server is not None and server.is_alive()
        if launched and not alive and not started.is_set():
            log.error("tritonserver is gone while loading the models; exiting so that the "
                      "supervisor restarts us")
            reap_children()
            os._exit(1)
        seen = seen or alive


def _triton_alive(triton: Any) -> bool:
    """Whether PyTriton still serves. Its own exit callback clears the model registry from
    another thread while `is_alive` iterates it, which raises instead of answering False."""
    try:
        return triton.is_alive()
    except Exception as exc:  # any failure here means it is stopping
        log.warning("PyTriton liveness check failed (%s: %s)", type(exc).__name__, exc)
        return False


if __name__ == "__main__":
    raise SystemExit(main())
