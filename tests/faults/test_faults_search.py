"""Postgres down during search, against the real search root: a query that needs the
database answers UNAVAILABLE (it answered UNKNOWN, with a traceback per request), the log
holds one warning instead of tracebacks, and the root answers normally once Postgres is
back, without a restart."""

from __future__ import annotations

import grpc
import pytest
from magiclens.v1 import common_pb2, search_pb2, search_pb2_grpc

from tests.support.processes import free_port, start, stop, wait_grpc


def _search_image_id(stub, image_id: int) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(search_pb2.SearchRequest(query=common_pb2.ImageInput(image_id=image_id),
                                             k=5), timeout=10)
    return err.value.code()


def test_search_answers_unavailable_while_postgres_is_down(private_postgres, infra_servers,
                                                           tmp_path):
    port = free_port()
    log = tmp_path / "root.log"
    root = start("services.search.root", log=log, env=infra_servers.env(
        DATABASE_URL=private_postgres.url, MAGICLENS_GRPC_PORT=str(port),
        MAGICLENS_METRICS_PORT="0", MAGICLENS_SHARDS=f"127.0.0.1:{free_port()}",
        MAGICLENS_TRITON_URL=f"127.0.0.1:{free_port()}"))
    try:
        channel = wait_grpc(port, 60, proc=root, log=log)
        stub = search_pb2_grpc.SearchServiceStub(channel)
        assert _search_image_id(stub, 1) == grpc.StatusCode.NOT_FOUND  # up: not in the pool
        private_postgres.stop()
        codes = [_search_image_id(stub, 1) for _ in range(20)]
        assert set(codes) == {grpc.StatusCode.UNAVAILABLE}
        private_postgres.start()
        assert _search_image_id(stub, 1) == grpc.StatusCode.NOT_FOUND
        assert root.poll() is None
    finally:
        code = stop(root)
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("database unavailable") == 1  # throttled: one warning, not 20
    assert code == 0
