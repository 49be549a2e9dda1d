"""Limits on what crosses a process boundary, in one table.

Why one table: a limit that two processes enforce differently fails in the middle of the
pipeline (a client accepts what the server refuses, a stored image cannot be embedded).
Every service, the CLI, the gateway and docs/runtime.md read these values from here.
"""

from __future__ import annotations

# gRPC messages, both directions, on every server and client channel.
MAX_GRPC_MESSAGE_BYTES = 32 * 1024 * 1024
# URLs: a page or image URL, and a query's image_url.
MAX_URL_CHARS = 2048
# Pool image ids are BIGSERIAL.
MAX_IMAGE_ID = 2**63 - 1
