"""`magiclens train | models | models import | promote`: the TrainingService over gRPC."""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from magiclens.v1 import training_pb2, training_pb2_grpc

from tools.cli import rpc
from tools.cli.errors import CliError, UsageError
from tools.cli.output import emit, table
from tools.cli.settings import ClientSettings

FINAL_RUN_STATES = {"succeeded", "failed"}
POLL_S = 2.0
IMPORT_CHUNK_BYTES = 1 << 20
MAX_IMPORT_BYTES = 4 << 30  # the service's default limit (MAGICLENS_TRAINING_MAX_IMPORT_BYTES)
IMPORT_TIMEOUT_S = 1800.0  # uploading and checking the large checkpoint takes minutes


def _run_dict(r: training_pb2.TrainingRun) -> dict[str, Any]:
    return {"run_id": r.run_id, "status": r.status, "model_version": r.model_version,
            "step": r.step, "total_steps": r.total_steps, "last_loss": r.last_loss,
            "reason": r.reason}


def _model_dict(m: training_pb2.ModelVersion) -> dict[str, Any]:
    return {"model_version": m.model_version, "config_name": m.config_name,
            "checkpoint_uri": m.checkpoint_uri, "status": m.status,
            "metrics": dict(sorted(m.metrics.items()))}


def _run_line(d: dict[str, Any]) -> str:
    line = (f"run {d['run_id']}: {d['status']}, step {d['step']}/{d['total_steps'] or '?'}, "
            f"loss {d['last_loss']:.4f}, model {d['model_version'] or '-'}")
    return line + (f" ({d['reason']})" if d["reason"] else "")


def _stub(settings: ClientSettings, ch) -> training_pb2_grpc.TrainingServiceStub:
    return training_pb2_grpc.TrainingServiceStub(ch)


def run_train(args: argparse.Namespace, settings: ClientSettings) -> int:
    if args.steps < 0:
        raise UsageError(f"--steps must be >= 0 (got {args.steps})")
    addr = settings.training_addr
    with rpc.channel(addr) as ch:
        stub = _stub(settings, ch)
        config = args.config or ("" if args.init else "compact")
        run = rpc.call("training", addr, stub.StartTraining, training_pb2.StartTrainingRequest(
            config_name=config, steps=args.steps, mode=args.mode, init_version=args.init),
            settings.rpc_timeout_s)
        while args.wait and run.status not in FINAL_RUN_STATES:
            if not args.json:
                print(_run_line(_run_dict(run)), file=sys.stderr, flush=True)
            time.sleep(POLL_S)
            run = rpc.call("training", addr, stub.GetRun,
                           training_pb2.GetRunRequest(run_id=run.run_id), settings.rpc_timeout_s)
    data = _run_dict(run)
    emit(data, args.json, _run_line)
    if args.wait and run.status == "failed":
        raise CliError(f"training run {run.run_id} failed: {run.reason or 'no reason given'}")
    return 0


def _chunks(path: Path, config: str, name: str, size: int, digest: str
            ) -> Iterator[training_pb2.ImportModelChunk]:
    """The upload: the header with the first piece of data, then the rest in order."""
    with path.open("rb") as f:
        yield training_pb2.ImportModelChunk(
            config_name=config, model_version=name, file_name=path.name, total_bytes=size,
            sha256=digest, data=f.read(IMPORT_CHUNK_BYTES))
        while data := f.read(IMPORT_CHUNK_BYTES):
            yield training_pb2.ImportModelChunk(data=data)


def run_import(args: argparse.Namespace, settings: ClientSettings) -> int:
    """Refuse what the service would refuse before uploading it, then stream the file."""
    from trainer.weights.formats import looks_like_pickle, pickle_refusal

    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_IMPORT_BYTES:
        raise UsageError(f"{path} is {size} bytes, over the {MAX_IMPORT_BYTES} import limit")
    with path.open("rb") as f:
        head = f.read(16)
    if looks_like_pickle(head, path.name):
        raise UsageError(pickle_refusal(path, args.config))
    h = hashlib.sha256()
    with path.open("rb") as f:
        while data := f.read(IMPORT_CHUNK_BYTES):
            h.update(data)
    addr = settings.training_addr
    with rpc.channel(addr) as ch:
        m = rpc.call("training", addr, _stub(settings, ch).ImportModel,
                     _chunks(path, args.config, args.name, size, h.hexdigest()),
                     max(settings.rpc_timeout_s, IMPORT_TIMEOUT_S))
    emit(_model_dict(m), args.json,
         lambda d: f"imported {path.name} as model {d['model_version']} (config "
                   f"{d['config_name']}, {d['status']}); serve it with `magiclens promote "
                   f"{d['model_version']}`, fine-tune it with `magiclens train --init "
                   f"{d['model_version']}`")
    return 0


def run_models(args: argparse.Namespace, settings: ClientSettings) -> int:
    addr = settings.training_addr
    with rpc.channel(addr) as ch:
        resp = rpc.call("training", addr, _stub(settings, ch).ListModels,
                        training_pb2.ListModelsRequest(), settings.rpc_timeout_s)
    data = {"models": [_model_dict(m) for m in resp.models]}

    def human(d: dict[str, Any]) -> str:
        if not d["models"]:
            return "no model versions yet"
        rows = [[m["model_version"], m["config_name"], m["status"],
                 ", ".join(f"{k}={v:.4g}" for k, v in m["metrics"].items())]
                for m in d["models"]]
        return table(rows, ["version", "config", "status", "metrics"])

    emit(data, args.json, human)
    return 0


def run_promote(args: argparse.Namespace, settings: ClientSettings) -> int:
    version = args.model_version.strip()
    if not version or len(version) > 200:
        raise UsageError("give the model version to promote (see `magiclens models`)")
    addr = settings.training_addr
    with rpc.channel(addr) as ch:
        m = rpc.call("training", addr, _stub(settings, ch).PromoteModel,
                     training_pb2.PromoteModelRequest(model_version=version),
                     settings.rpc_timeout_s)
    emit(_model_dict(m), args.json,
         lambda d: f"model {d['model_version']} is now {d['status']}")
    return 0
