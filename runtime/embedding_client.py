"""The encoders as their clients use them (the embedding worker, the search root): a client
of the Triton embedding server (tritonclient gRPC; the server is services/embedding/server.py).

`EmbeddingClient.embed_targets(images)` / `.embed_queries(images, instructions)` return unit
vectors and the model version that produced them. Pass `model_version` to pin a version the
server still holds (blue/green: queries must match the version the index serves).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from runtime import ports, tracing
from runtime.errors import UnavailableError

DEFAULT_URL = ports.TRITON_ADDR
MAX_REQUEST_IMAGES = 16  # the server's max_batch_size


class EmbeddingError(Exception):
    """The server rejected a request (bad input or unknown version); message is one line."""


class BadImageError(EmbeddingError):
    """The input itself is unusable (cannot be decoded, too large): retrying cannot help."""


class ModelNotLoadedError(EmbeddingError):
    """The pinned `model_version` is not loaded (yet): e.g. the server is still loading a
    version that was just promoted. Not the input's fault; retry later."""


class NoTextPathError(EmbeddingError):
    """A text-only query for a model version that has no text-only path (no text-query
    head): the request is fine, this version cannot answer it."""


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # [B, D] float32, unit norm
    model_version: str


def default_url() -> str:
    return os.environ.get("MAGICLENS_TRITON_URL", DEFAULT_URL)


class EmbeddingClient:
    def __init__(self, url: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = url or default_url()
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(self.url)

    def close(self) -> None:
        self._client.close()

    def ready(self) -> bool:
        try:
            return all(self._client.is_model_ready(m) for m in ("query", "target", "text_query"))
        except InferenceServerException:
            return False

    def _infer(self, model: str, inputs: list, model_version: str,
               timeout_s: float | None) -> Embeddings:
        outputs = [grpcclient.InferRequestedOutput("embedding"),
                   grpcclient.InferRequestedOutput("model_version")]
        params = {"model_version": model_version} if model_version else {}
        parent = tracing.traceparent()  # the server's spans join the caller's trace
        if parent:
            params[tracing.TRITON_PARAMETER] = parent
        try:
            res = self._client.infer(model, inputs, outputs=outputs, parameters=params or None,
                                     client_timeout=timeout_s or self.timeout_s)
        except InferenceServerException as exc:
            lines = [ln.strip() for ln in (exc.message() or str(exc)).splitlines() if ln.strip()]
            # the server's exception line (e.g. "BadInput: cannot decode image"), not the traceback
            errs = [ln for ln in lines if "BadInput:" in ln or "Error:" in ln]
            msg = (errs[-1].split("BadInput:", 1)[-1].strip() if errs
                   else lines[-1] if lines else "embedding server error")
            status = str(exc.status() or "")
            if "UNAVAILABLE" in status or "DEADLINE" in status or "Deadline" in msg:
                raise UnavailableError(f"embedding server {self.url}: {msg}") from None
            if any("ModelNotLoadedError:" in ln for ln in errs):  # the server's own class
                detail = msg.split("ModelNotLoadedError:", 1)[-1].strip()
                raise ModelNotLoadedError(detail) from None
            if any("NoTextPathError:" in ln for ln in errs):  # the server's own class
                raise NoTextPathError(msg.split("NoTextPathError:", 1)[-1].strip()) from None
            if any("BadInput:" in ln for ln in errs):
                raise BadImageError(msg) from None
            if "unknown model" in msg.lower() or "not ready" in msg.lower():
                # the server is (re)loading models, e.g. right after the first promotion
                raise UnavailableError(f"embedding server {self.url}: {msg}") from None
            raise EmbeddingError(msg) from None
        versions = res.as_numpy("model_version").reshape(-1)
        return Embeddings(res.as_numpy("embedding").astype(np.float32),
                          versions[0].decode() if len(versions) else "")

    @staticmethod
    def _bytes_input(name: str, items: list[bytes]) -> grpcclient.InferInput:
        arr = np.array([[b] for b in items], dtype=np.object_)
        inp = grpcclient.InferInput(name, list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr)
        return inp

    @staticmethod
    def _pixels_input(pixels: np.ndarray) -> grpcclient.InferInput:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        inp = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
        inp.set_data_from_numpy(pixels)
        return inp

    def embed_targets(self, images: list[bytes] | np.ndarray, model_version: str = "",
                      timeout_s: float | None = None) -> Embeddings:
        """Encoded image bytes (or preprocessed [B,H,W,3] pixels) -> index embeddings."""
        _check(len(images))
        inp = (self._pixels_input(images) if isinstance(images, np.ndarray)
               else self._bytes_input("image", list(images)))
        return self._infer("target", [inp], model_version, timeout_s)

    def embed_queries(self, images: list[bytes] | np.ndarray, instructions: list[str],
                      model_version: str = "", timeout_s: float | None = None) -> Embeddings:
        """(image, instruction) pairs -> query embeddings."""
        _check(len(images))
        if len(instructions) != len(images):
            raise ValueError("one instruction per image")
        img = (self._pixels_input(images) if isinstance(images, np.ndarray)
               else self._bytes_input("image", list(images)))
        txt = self._bytes_input("instruction", [t.encode("utf-8") for t in instructions])
        return self._infer("query", [img, txt], model_version, timeout_s)


    def embed_text_queries(self, instructions: list[str], model_version: str = "",
                           timeout_s: float | None = None) -> Embeddings:
        """Text-only queries (no image) -> query embeddings in the index's space.
        NoTextPathError when the version has no text-only path."""
        _check(len(instructions))
        txt = self._bytes_input("instruction", [t.encode("utf-8") for t in instructions])
        return self._infer("text_query", [txt], model_version, timeout_s)


def _check(n: int) -> None:
    if not 0 < n <= MAX_REQUEST_IMAGES:
        raise ValueError(f"{n} images per request; expected 1..{MAX_REQUEST_IMAGES}")
