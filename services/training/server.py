"""gRPC TrainingService: queue runs, read their progress, list and promote model versions."""

from __future__ import annotations

import grpc
from magiclens.v1 import training_pb2, training_pb2_grpc

from runtime import db
from services.training import importer, store
from services.training.config import TrainingSettings
from services.training.worker import (
    TrainingWorker,
    available_configs,
    model_of,
    resolve_config,
)

MAX_ID_CHARS = 200


def run_message(run: store.Run) -> training_pb2.TrainingRun:
    return training_pb2.TrainingRun(
        run_id=run.run_id, status=run.status, model_version=run.model_version, step=run.step,
        total_steps=run.total_steps, last_loss=run.last_loss or 0.0, reason=run.reason)


def model_message(row: dict) -> training_pb2.ModelVersion:
    metrics = {k: float(v) for k, v in (row["metrics"] or {}).items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    return training_pb2.ModelVersion(
        model_version=row["model_version"], config_name=row["config_name"],
        checkpoint_uri=row["checkpoint_uri"] or "", status=row["status"], metrics=metrics)


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, settings: TrainingSettings, worker: TrainingWorker | None = None) -> None:
        self.settings = settings
        self.worker = worker
        self.topic = store.models_topic(settings.training_models_topic)
        self.trainable = worker.configs if worker is not None else ()

    def StartTraining(self, request, context):  # noqa: N802 (gRPC method name)
        init = self._init_version(request.init_version, context)
        name = request.config_name or (init["config_name"] if init else "compact")
        if name not in available_configs():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unknown config {name[:MAX_ID_CHARS]!r} "
                          f"(known: {', '.join(available_configs())})")
        if not 0 <= request.steps <= self.settings.training_max_steps:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"steps must be 0 (config default) .. {self.settings.training_max_steps}")
        if request.mode not in ("", "frozen", "full"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "mode must be frozen or full")
        if name not in self.trainable and init is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"config {name!r} has no weights that install offline: import the "
                          f"released checkpoint (`magiclens models import FILE --config {name}`) "
                          f"and start from it with --init VERSION; trainable without --init "
                          f"here: {', '.join(self.trainable)}")
        try:
            cfg = resolve_config(name, request.steps, request.mode)
        except (ValueError, TypeError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad training config: {exc}")
        if init is not None:
            init_model = model_of(init["config_name"])
            if init_model != cfg.model:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"model version {init['model_version']} is a {init_model or '?'} "
                              f"model; config {name!r} trains {cfg.model}")
        with db.transaction(self.settings.database_url) as conn:
            run = store.create_run(
                conn, name, request.steps, request.mode,
                {"requested": {"steps": request.steps, "mode": request.mode},
                 "default_steps": cfg.steps},
                init=(init["model_version"], init["checkpoint_uri"]) if init else None)
        if self.worker is not None:
            self.worker.wake.set()
        return run_message(run)

    def _init_version(self, version: str, context) -> dict | None:
        """The model_versions row a run starts from (None without --init), or abort."""
        if not version:
            return None
        if len(version) > MAX_ID_CHARS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "init_version is too long")
        with db.connect(self.settings.database_url) as conn:
            try:
                row = store.get_model(conn, version)
            except store.NotFound as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if row["status"] not in ("published", "promoted") or not row["checkpoint_uri"]:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"model version {version} is {row['status']}; a run can start only "
                          "from a published version")
        return row

    def ImportModel(self, request_iterator, context):  # noqa: N802
        try:
            row = importer.import_model(self.settings, self.topic, request_iterator)
        except importer.ImportRefused as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except store.Conflict as exc:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        return model_message(row)

    def GetRun(self, request, context):  # noqa: N802
        if not request.run_id or len(request.run_id) > MAX_ID_CHARS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "run_id is required")
        with db.connect(self.settings.database_url) as conn:
            try:
                return run_message(store.get_run(conn, request.run_id))
            except store.NotFound as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    def ListModels(self, request, context):  # noqa: N802
        with db.connect(self.settings.database_url) as conn:
            rows = store.list_models(conn)
        return training_pb2.ListModelsResponse(models=[model_message(r) for r in rows])

    def PromoteModel(self, request, context):  # noqa: N802
        if not request.model_version or len(request.model_version) > MAX_ID_CHARS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model_version is required")
        try:
            with db.transaction(self.settings.database_url) as conn:
                row = store.promote(conn, self.topic, request.model_version)
        except store.NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except store.Conflict as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return model_message(row)


def registration(servicer: TrainingServicer):
    return (training_pb2_grpc.add_TrainingServiceServicer_to_server, servicer,
            "magiclens.v1.TrainingService")
