"""The OpenAPI document the gateway serves: a valid OpenAPI 3.1 document (openapi-spec-validator),
naming exactly the app's API routes, and describing what a live gateway answers (each
response's status is documented and its JSON body validates against the documented schema),
over a real PostgreSQL pool with search down."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from services.gateway.app import ROUTES
from services.gateway.config import GatewaySettings
from services.gateway.openapi import openapi_spec
from tests.gateway.gwutil import build_pool, running_gateway
from tests.support.processes import free_port

UPLOAD_LIMIT = 64 * 1024


def test_the_document_is_valid_openapi_and_names_every_api_route():
    spec = openapi_spec(GatewaySettings())
    validate_spec(spec)  # raises on any violation of the OpenAPI 3.1 schema
    routes = {(path, method.lower()) for path, _, methods in ROUTES for method in methods
              if path.startswith(("/api/", "/images/"))}
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == routes
    assert spec["paths"]["/api/search"]["post"]["requestBody"]["content"]["image/*"][
        "schema"]["maxLength"] == GatewaySettings().gateway_max_upload_bytes


def _check(spec: dict[str, Any], path: str, method: str, r: httpx.Response) -> None:
    """r's status is documented for path+method, and its JSON body fits the schema."""
    responses = spec["paths"][path][method]["responses"]
    assert str(r.status_code) in responses, (path, method, r.status_code, r.text)
    schema = responses[str(r.status_code)]["content"]["application/json"]["schema"]
    # The document itself is the root the schemas' #/components/... references point into.
    Draft202012Validator({**schema, "components": spec["components"]}).validate(r.json())


@pytest.fixture(scope="module")
def live(fresh_db, tmp_path_factory):
    root = tmp_path_factory.mktemp("gw-openapi")
    ids = build_pool(fresh_db, root)
    examples = root / "examples.json"
    examples.write_text(json.dumps([{"image_id": ids["moon"], "instruction": "at night"}]))
    with running_gateway(database_url=fresh_db, blob_uri=f"file://{root / 'blobs'}",
                         search_addr=f"127.0.0.1:{free_port()}", gateway_examples_file=examples,
                         gateway_max_upload_bytes=UPLOAD_LIMIT,
                         gateway_status_timeout_s=1.0) as base, \
            httpx.Client(base_url=base, timeout=30) as client:
        yield client, ids


def test_live_answers_match_the_document(live):
    client, ids = live
    spec = client.get("/api/openapi.json").json()
    validate_spec(spec)
    assert spec["paths"]["/api/search"]["post"]["requestBody"]["content"]["image/*"][
        "schema"]["maxLength"] == UPLOAD_LIMIT  # this gateway's own limit
    some = ids["coffee"]
    cases = [
        ("/api/pool", "get", {"params": {"n": 4}}, 200),
        ("/api/pool", "get", {"params": {"n": 0}}, 400),
        ("/api/examples", "get", {}, 200),
        ("/api/health", "get", {}, 200),
        ("/api/status", "get", {}, 200),
        ("/api/search", "get", {"params": {"image_id": some, "q": "at night"}}, 503),
        ("/api/search", "get", {"params": {"image_id": "x"}}, 400),
        ("/api/search", "post", {"json": {"instruction": "a red mug"}}, 503),
        ("/api/search", "post", {"json": {"image_id": some, "k": 0}}, 400),
        ("/api/search", "post", {"content": b"x", "headers": {"Content-Type": "text/plain"}},
         415),
        ("/api/search", "post", {"content": b"\xff" * (UPLOAD_LIMIT + 1),
                                 "headers": {"Content-Type": "image/jpeg"}}, 413),
        ("/images/{image_id}", "get", {"url": "/images/abc"}, 400),
        ("/images/{image_id}", "get", {"url": f"/images/{max(ids.values()) + 99}"}, 404),
    ]
    for path, method, kwargs, status in cases:
        url = kwargs.pop("url", path)
        r = client.request(method.upper(), url, **kwargs)
        assert r.status_code == status, (path, kwargs, r.text)
        _check(spec, path, method, r)
    st = client.get("/api/status").json()
    assert st["database"]["available"] is True and st["search"]["available"] is False
