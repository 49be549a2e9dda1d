"""Limits on what crosses a process boundary, in one table.

Why one table: a limit that two processes enforce differently fails in the middle of the
pipeline (a client accepts what the server refuses, a stored image cannot be embedded).
Services, the CLI and the gateway read these values from here; docs/runtime.md holds
`python -m runtime.limits` (a test keeps it current).

Pure Python: the Triton server (.venv-triton) reads it too.
"""

from __future__ import annotations

import sys

MiB = 1024 * 1024

# Images. MAX_IMAGE_BYTES is the largest image any service decodes: the embedding server,
# the search root (query images), triplegen's annotator and training's export. Mining stores
# nothing larger (it downloads at most MAGICLENS_MINING_MAX_IMAGE_BYTES, 15 MiB by default).
# Before this table the annotator and training took 32 MiB that the embedding server refused.
MAX_IMAGE_BYTES = 20 * MiB
MAX_IMAGE_PIXELS = 40_000_000  # decompression-bomb guard, everywhere an image is decoded
# A query image a client sends: the CLI's --image file, the gateway's upload (its default
# MAGICLENS_GATEWAY_MAX_UPLOAD_BYTES; the web UI's static/app.js checks the same number).
MAX_QUERY_IMAGE_BYTES = 10 * MiB
# Instructions: what a search query may carry and what training takes from Postgres. The
# trainer's own JSONL reader accepts up to 2,000 characters (trainer/data/triples.py, a
# file-format guard); everything the suite writes or serves stays within this one value.
MAX_INSTRUCTION_CHARS = 1000
# Results per search query (the root, the CLI's -k, the gateway's k).
MAX_K = 100
# Wire sizes.
MAX_GRPC_MESSAGE_BYTES = 32 * MiB  # every gRPC server and client channel, both directions
MAX_EVENT_BYTES = 10 * MiB  # a Kafka record (producer request size, consumer fetch sizes)
# What one compressed Kafka batch may inflate to in a consumer (runtime/kafka_limits.py):
# kafka-python itself bounds only the compressed bytes of a fetch.
MAX_DECOMPRESSED_BATCH_BYTES = 32 * MiB
MAX_URL_CHARS = 2048  # a page or image URL, and a query's image_url
# ... and its UTF-8 size: a URL meets unique btree indexes, whose rows must stay under ~2.7 kB
# (2,019 characters of 3-byte text once wedged mining: issue 14).
MAX_URL_BYTES = 2048
# Nesting of a JSON event (the events are flat; 200k levels once crash-looped a consumer).
MAX_JSON_DEPTH = 32
MAX_IMAGE_ID = 2**63 - 1  # pool image ids are BIGSERIAL

_DOC = (
    ("MAX_IMAGE_BYTES", MAX_IMAGE_BYTES, "an image any service decodes (embedding server, "
     "search root, triplegen annotator, training export)"),
    ("MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS, "pixels of any decoded image (mining's default too)"),
    ("MAX_QUERY_IMAGE_BYTES", MAX_QUERY_IMAGE_BYTES, "a query image from the CLI or the web UI "
     "(the gateway's default upload limit)"),
    ("MAX_INSTRUCTION_CHARS", MAX_INSTRUCTION_CHARS, "an instruction: search queries (root, "
     "CLI, gateway, encoders) and training triples"),
    ("MAX_K", MAX_K, "results per search query"),
    ("MAX_GRPC_MESSAGE_BYTES", MAX_GRPC_MESSAGE_BYTES, "a gRPC message, either direction"),
    ("MAX_EVENT_BYTES", MAX_EVENT_BYTES, "a Kafka record"),
    ("MAX_DECOMPRESSED_BATCH_BYTES", MAX_DECOMPRESSED_BATCH_BYTES, "a compressed Kafka batch, "
     "inflated in a consumer (over it: skipped, counted, logged)"),
    ("MAX_URL_CHARS", MAX_URL_CHARS, "a page or image URL"),
    ("MAX_URL_BYTES", MAX_URL_BYTES, "a page or image URL in UTF-8 (it meets btree indexes)"),
    ("MAX_JSON_DEPTH", MAX_JSON_DEPTH, "nesting of a JSON Kafka event"),
)


def _human(name: str, value: int) -> str:
    if name.endswith("_BYTES") and value >= MiB:
        return f"{value // MiB} MiB"
    if name.endswith("_BYTES"):
        return f"{value:,} bytes"
    return f"{value:,}"


def markdown_table() -> str:
    """The table docs/runtime.md shows."""
    rows = ["| limit | value | applies to |", "|---|---|---|"]
    rows += [f"| `{name}` | {_human(name, value)} | {what} |" for name, value, what in _DOC]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
