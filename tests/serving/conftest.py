"""Fixtures for the serving tests: a real Triton server and a loaded model, both of the
real checkpoints of the session fixture `checkpoints` (tests/conftest.py). Helpers the tests
share are in serving_support.py."""

from __future__ import annotations

import os

import pytest

from runtime.embedding_client import EmbeddingClient
from services.embedding.model import LoadedModel, load_checkpoint
from tests.serving.serving_support import TRITON_PY, TritonProc, stop_triton
from tests.support.processes import ROOT, free_port, start, wait_for
from tools.otlp_receiver import OtlpReceiver


@pytest.fixture(scope="session")
def otlp_receiver() -> OtlpReceiver:
    """An OTLP trace receiver the serving processes export their spans to (tracing on)."""
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def triton(checkpoints, tmp_path_factory, otlp_receiver) -> TritonProc:
    """The real Triton embedding server (PyTriton, .venv-triton), started once, with tracing
    to `otlp_receiver`."""
    if not TRITON_PY.exists():
        pytest.skip(".venv-triton is missing (./taskw sets it up)")
    d = tmp_path_factory.mktemp("triton")
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    current = d / "current_model.json"
    log = d / "server.log"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}", **otlp_receiver.env())
    proc = start("services.embedding.server", "--current-file", str(current),
                 "--checkpoint", str(checkpoints["serving-a"]), "--model-version", "serving-a",
                 "--grpc-port", str(grpc_port), "--http-port", str(http_port),
                 "--metrics-port", str(metrics_port), "--workspace", str(d / "workspace"),
                 env=env, log=log, python=TRITON_PY)
    url = f"127.0.0.1:{grpc_port}"
    client = EmbeddingClient(url)
    try:
        wait_for(client.ready, 240, "the Triton server to load its models", interval=0.5,
                 proc=proc, log=log)
    except AssertionError as exc:
        proc.kill()
        pytest.fail(f"Triton server did not start: {exc}")
    finally:
        client.close()
    server = TritonProc(proc, url, current, log)
    yield server
    stop_triton(server)


@pytest.fixture(scope="session")
def model_a(checkpoints):
    """The served model as the server runs it: the image tower on onnxruntime."""
    return load_checkpoint(checkpoints["serving-a"], "serving-a", image_runtime="onnxruntime")


@pytest.fixture(scope="session")
def model_a_jax(model_a):
    """The same version with the image tower on JAX (MAGICLENS_IMAGE_RUNTIME=jax): exactly
    the trained model's numbers."""
    return LoadedModel(model_a.model_version, model_a.config_name, model_a.params,
                       model_a.model, model_a.preprocessor, image_runtime="jax")
