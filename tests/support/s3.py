"""A real S3 API on 127.0.0.1 for tests: moto's threaded server (HTTP, the S3 wire protocol,
multipart uploads), reached by the production code through boto3 exactly as in a cluster,
with the variables a pod gets from the `magiclens-s3` Secret (AWS_ENDPOINT_URL, keys, region).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer

from tests.support.processes import free_port


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint)

    def object_keys(self) -> list[str]:
        resp = self.client().list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in resp.get("Contents", []))


@contextmanager
def s3_server(bucket: str = "magiclens-test") -> Iterator[S3]:
    """Start the server, set the AWS_* variables (restored after), create `bucket`."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        s3 = S3(env["AWS_ENDPOINT_URL"], bucket)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
