"""Client helpers for the CLI and the demo: TrainingService calls through gRPC stubs."""

from __future__ import annotations

import time
from collections.abc import Callable

from magiclens.v1 import training_pb2, training_pb2_grpc

from runtime import ports, rpc

DEFAULT_TARGET = ports.TRAINING_ADDR
FINAL = ("succeeded", "failed")


def stub(target: str = DEFAULT_TARGET) -> training_pb2_grpc.TrainingServiceStub:
    return training_pb2_grpc.TrainingServiceStub(rpc.channel(target))


def _stub(target: str | training_pb2_grpc.TrainingServiceStub):
    return stub(target) if isinstance(target, str) else target


def start_training(config_name: str = "compact", steps: int = 0, mode: str = "",
                   target: str | training_pb2_grpc.TrainingServiceStub = DEFAULT_TARGET,
                   timeout: float = 30.0) -> training_pb2.TrainingRun:
    """Queue a run; returns it (status 'queued'). steps=0 / mode='' use the config's values."""
    return _stub(target).StartTraining(training_pb2.StartTrainingRequest(
        config_name=config_name, steps=steps, mode=mode), timeout=timeout)


def get_run(run_id: str, target: str | training_pb2_grpc.TrainingServiceStub = DEFAULT_TARGET,
            timeout: float = 10.0) -> training_pb2.TrainingRun:
    return _stub(target).GetRun(training_pb2.GetRunRequest(run_id=run_id), timeout=timeout)


def wait_for_run(run_id: str, target: str | training_pb2_grpc.TrainingServiceStub = DEFAULT_TARGET,
                 timeout: float = 3600.0, poll_s: float = 1.0,
                 on_progress: Callable[[training_pb2.TrainingRun], None] | None = None
                 ) -> training_pb2.TrainingRun:
    """Poll until the run succeeded or failed (returned either way); TimeoutError otherwise."""
    s = _stub(target)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        run = get_run(run_id, s)
        if on_progress is not None and (last is None or (run.step, run.status) != last):
            on_progress(run)
        last = (run.step, run.status)
        if run.status in FINAL:
            return run
        if time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} still {run.status} at step {run.step}/"
                               f"{run.total_steps} after {timeout:.0f}s")
        time.sleep(poll_s)


def list_models(target: str | training_pb2_grpc.TrainingServiceStub = DEFAULT_TARGET,
                timeout: float = 10.0) -> list[training_pb2.ModelVersion]:
    return list(_stub(target).ListModels(training_pb2.ListModelsRequest(),
                                         timeout=timeout).models)


def promote(model_version: str,
            target: str | training_pb2_grpc.TrainingServiceStub = DEFAULT_TARGET,
            timeout: float = 30.0) -> training_pb2.ModelVersion:
    return _stub(target).PromoteModel(training_pb2.PromoteModelRequest(
        model_version=model_version), timeout=timeout)
