"""Fixtures for the serving tests: a real Triton server and a loaded model, both of the
real checkpoints of the session fixture `checkpoints` (tests/conftest.py). Helpers the tests
share are in serving_support.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.embedding.model import LoadedModel, load_checkpoint
from tests.serving.serving_support import TritonProc, running_triton
from tools.otlp_receiver import OtlpReceiver


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP trace receiver the serving processes export their spans to (tracing on)."""
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def triton(checkpoints, tmp_path_factory, otlp_receiver) -> Iterator[TritonProc]:
    """The real Triton embedding server shared by the serving tests, started once and stopped
    at the end of the session (a test that stops a server starts its own), with tracing to
    `otlp_receiver`."""
    with running_triton(checkpoints["serving-a"], tmp_path_factory.mktemp("triton"),
                        extra_env=otlp_receiver.env()) as server:
        yield server


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
