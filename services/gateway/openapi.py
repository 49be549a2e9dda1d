"""The gateway's JSON API as an OpenAPI 3.1 document, served at /api/openapi.json.

Written by hand because the handlers parse their own parameters (to keep one-line 400s and
to stream upload bodies): tests/gateway/test_gateway_openapi.py validates it with
openapi-spec-validator, checks that its paths are exactly the app's API routes, and checks
live responses against its schemas. Limits come from the same settings the handlers use.
"""

from __future__ import annotations

from typing import Any

from runtime.limits import MAX_K, MAX_URL_CHARS
from services.gateway import store
from services.gateway.config import GatewaySettings

VERSION = "0.2.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*codes: int) -> dict[str, Any]:
    why = {400: "bad parameter or body", 404: "unknown image", 408: "body not received in time",
           409: "the search index is not ready", 411: "no Content-Length and not chunked",
           413: "upload over the limit", 415: "wrong Content-Type",
           429: "search root out of capacity", 500: "internal error",
           501: "not implemented by the search root", 502: "search root failed",
           503: "search or the database is down, or the gateway is busy",
           504: "search timed out"}
    return {str(c): {"description": why[c], "content": _json_content(_ref("Error"))}
            for c in codes}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def openapi_spec(settings: GatewaySettings) -> dict[str, Any]:
    """The document for a gateway with these settings (upload and instruction limits)."""
    max_chars = settings.gateway_max_instruction_chars
    k = _query("k", {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 12},
               "number of results")
    q = _query("q", {"type": "string", "maxLength": max_chars, "default": ""},
               "the instruction: what to find, relative to the query image")
    include = _query("include_query_image", {"type": "string", "enum": ["0", "1", "true",
                                                                         "false"]},
                     "keep the query image and its near-duplicates in the results")
    search_errors = _errors(400, 404, 409, 429, 500, 501, 502, 503, 504)
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string", "description": "one line"},
            "search_available": {"type": "boolean"}}},
        "Hit": {"type": "object", "required": ["image_id", "score", "src"], "properties": {
            "image_id": {"type": "integer"}, "image_url": {"type": "string"},
            "score": {"type": "number"}, "page_url": {"type": "string"},
            "page_title": {"type": "string"}, "alt_text": {"type": "string"},
            "caption": {"type": "string"},
            "src": {"type": "string", "description": "this gateway's URL of the image"}}},
        "SearchResult": {"type": "object",
                         "required": ["model_version", "partial", "missing_shards", "hits"],
                         "properties": {
                             "model_version": {"type": "string"},
                             "partial": {"type": "boolean",
                                         "description": "some shard did not answer"},
                             "missing_shards": {"type": "array", "items": {"type": "integer"}},
                             "hits": {"type": "array", "items": _ref("Hit")}}},
        "SearchJson": {
            "type": "object",
            "description": "image_id or image_url; with neither, the instruction alone is "
                           "sent to the search root, which accepts or refuses it (400)",
            "properties": {
                "image_id": {"type": "integer", "minimum": 1},
                "image_url": {"type": "string", "pattern": "^https?://",
                              "maxLength": MAX_URL_CHARS},
                "instruction": {"type": "string", "maxLength": max_chars},
                "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 12},
                "include_query_image": {"type": "boolean", "default": False}}},
        "PoolImage": {"type": "object", "required": ["image_id", "src"], "properties": {
            "image_id": {"type": "integer"}, "width": {"type": ["integer", "null"]},
            "height": {"type": ["integer", "null"]}, "alt_text": {"type": "string"},
            "caption": {"type": "string"}, "page_url": {"type": "string"},
            "page_title": {"type": "string"}, "src": {"type": "string"}}},
        "Example": {"type": "object", "required": ["image_id", "instruction", "title"],
                    "properties": {"image_id": {"type": "integer", "minimum": 1},
                                   "instruction": {"type": "string"},
                                   "title": {"type": "string"}}},
        "IndexStatus": {"type": "object", "required": ["available"], "properties": {
            "available": {"type": "boolean"}, "error": {"type": "string"},
            "model_version": {"type": "string"}, "num_vectors": {"type": "integer"},
            "shards": {"type": "integer"}, "shards_up": {"type": "integer"},
            "freshness_p50_s": {"type": "number"}}},
        "Status": {"type": "object", "required": ["database", "search"], "properties": {
            "database": {"type": "object", "required": ["available"], "properties": {
                "available": {"type": "boolean"}, "error": {"type": "string"}}},
            "search": _ref("IndexStatus"),
            "counts": {"type": "object", "additionalProperties": {
                "type": ["object", "null"], "additionalProperties": {"type": "integer"}}},
            "models": {"type": "array", "items": {"type": "object"}},
            "embeddings": {"type": "object"}, "index": {"type": "object"}}},
    }
    paths: dict[str, Any] = {
        "/api/search": {
            "get": {"operationId": "searchByPoolImage", "summary": "search by a pool image",
                    "parameters": [
                        {"name": "image_id", "in": "query", "required": True,
                         "schema": {"type": "integer", "minimum": 1}},
                        q, k, include],
                    "responses": {"200": {"description": "ranked hits",
                                          "content": _json_content(_ref("SearchResult"))},
                                  **search_errors}},
            "post": {"operationId": "search",
                     "summary": "search by an uploaded image, a pool id, an image URL, "
                                "or an instruction alone",
                     "description": "An image body streams in: over the upload limit it is "
                                    "refused with 413 as soon as that is known; it must "
                                    "arrive whole within the body timeout (408).",
                     "parameters": [q, k, include],
                     "requestBody": {"required": True, "content": {
                         "image/*": {"schema": {
                             "type": "string", "contentMediaType": "image/*",
                             "maxLength": settings.gateway_max_upload_bytes}},
                         "application/octet-stream": {"schema": {"type": "string"}},
                         "application/json": {"schema": _ref("SearchJson")}}},
                     "responses": {"200": {"description": "ranked hits",
                                           "content": _json_content(_ref("SearchResult"))},
                                   **search_errors, **_errors(408, 411, 413, 415)}}},
        "/api/pool": {"get": {
            "operationId": "poolSample", "summary": "a random sample of live pool images",
            "parameters": [_query("n", {"type": "integer", "minimum": 1,
                                        "maximum": store.MAX_SAMPLE, "default": 24},
                                  "sample size")],
            "responses": {"200": {"description": "images", "content": _json_content({
                "type": "object", "required": ["images"],
                "properties": {"images": {"type": "array", "items": _ref("PoolImage")}}})},
                **_errors(400, 503)}}},
        "/api/examples": {"get": {
            "operationId": "examples", "summary": "one-click example queries",
            "responses": {"200": {"description": "examples", "content": _json_content({
                "type": "object", "required": ["examples"],
                "properties": {"examples": {"type": "array", "items": _ref("Example")}}})},
                **_errors(500)}}},
        "/api/health": {"get": {
            "operationId": "health", "summary": "is search up",
            "responses": {"200": {"description": "the search root's index status",
                                  "content": _json_content({
                                      "type": "object", "required": ["search"],
                                      "properties": {"search": _ref("IndexStatus")}})},
                          **_errors(503)}}},
        "/api/status": {"get": {
            "operationId": "status", "summary": "pipeline counts, models, index status",
            "responses": {"200": {"description": "status",
                                  "content": _json_content(_ref("Status"))},
                          **_errors(503)}}},
        "/api/openapi.json": {"get": {
            "operationId": "openapi", "summary": "this document",
            "responses": {"200": {"description": "OpenAPI 3.1",
                                  "content": _json_content({"type": "object"})}}}},
        "/images/{image_id}": {"get": {
            "operationId": "imageBytes", "summary": "a pool image's bytes",
            "parameters": [{"name": "image_id", "in": "path", "required": True,
                            "schema": {"type": "integer", "minimum": 1}}],
            "responses": {"200": {"description": "the stored image", "content": {
                "image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}}}},
                **_errors(400, 404, 503)}}},
    }
    return {"openapi": "3.1.0",
            "info": {"title": "MagicLens web gateway", "version": VERSION,
                     "description": "Search a pool of web images by an image and an "
                                    "instruction. Every error is JSON {\"error\": one line}."},
            "paths": paths, "components": {"schemas": schemas}}
