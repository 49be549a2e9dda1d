"""Postgres down during search, against the real search root: a query that needs the
database answers UNAVAILABLE (it answered UNKNOWN, with a traceback per request), the log
holds one warning instead of tracebacks, and the root answers normally once Postgres is
back, without a restart."""

from __future__ import annotations

import time

import grpc
import pytest
from magiclens.v1 import common_pb2, search_pb2, search_pb2_grpc

from tests.mining.mining_support import WebServer, noise_image
from tests.support.processes import free_port, start, stop, wait_for, wait_grpc


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


def _root_with_a_slow_image(infra_servers, tmp_path, name: str, **env: str):
    """A search root with no serving shard or Triton, and an allowed image URL that answers
    after 3 s (a search by it holds its slot that long): (root, stub, web, url)."""
    web = WebServer()
    slow = web.add("/slow.png", noise_image(name), ctype="image/png", delay_s=3.0)
    port = free_port()
    log = tmp_path / "root.log"
    root = start("services.search.root", log=log, env=infra_servers.env(
        MAGICLENS_GRPC_PORT=str(port), MAGICLENS_METRICS_PORT="0",
        MAGICLENS_SHARDS=f"127.0.0.1:{free_port()}", MAGICLENS_URL_ALLOWLIST="127.0.0.1",
        MAGICLENS_TRITON_URL=f"127.0.0.1:{free_port()}", **env))
    try:
        stub = search_pb2_grpc.SearchServiceStub(wait_grpc(port, 60, proc=root, log=log))
    except BaseException:
        web.close()
        stop(root)
        raise
    return root, stub, web, slow


def test_an_overloaded_root_refuses_at_once_instead_of_queueing(infra_servers, tmp_path):
    """One search slot, 0.2 s of queueing: while a search holds the slot (its image URL
    answers after 3 s), another is refused with RESOURCE_EXHAUSTED within the queue bound
    rather than waiting behind it; once the slot is free, searches are admitted again."""
    root, stub, web, slow = _root_with_a_slow_image(
        infra_servers, tmp_path, "admission", MAGICLENS_MAX_INFLIGHT="1",
        MAGICLENS_QUEUE_WAIT_S="0.2")
    try:
        holder = stub.Search.future(search_pb2.SearchRequest(
            query=common_pb2.ImageInput(image_url=slow)), timeout=20)
        wait_for(lambda: web.requests, 10, "the first search to fetch its image")
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Search(search_pb2.SearchRequest(
                query=common_pb2.ImageInput(image_bytes=noise_image("b"))), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - t0 < 2.5  # the queue bound, not the 3 s holder
        with pytest.raises(grpc.RpcError) as first:
            holder.result()
        assert first.value.code() == grpc.StatusCode.UNAVAILABLE  # no shard serves here
        with pytest.raises(grpc.RpcError) as after:
            stub.Search(search_pb2.SearchRequest(
                query=common_pb2.ImageInput(image_bytes=noise_image("c"))), timeout=10)
        assert after.value.code() == grpc.StatusCode.UNAVAILABLE  # admitted again
    finally:
        web.close()
        assert stop(root) == 0


def test_calls_beyond_the_queue_bound_are_refused_without_waiting(infra_servers, tmp_path):
    """One search slot, no queue beyond the 4 calls kept for health and status, a long
    queue wait: while a search holds the slot for 3 s and 4 more wait for it, the next
    call is refused with RESOURCE_EXHAUSTED at once. Before, calls past the server's
    threads queued inside gRPC, unseen by the admission bound (64 clients: p50 1.2 s)."""
    root, stub, web, slow = _root_with_a_slow_image(
        infra_servers, tmp_path, "bound", MAGICLENS_MAX_INFLIGHT="1",
        MAGICLENS_MAX_QUEUED="0", MAGICLENS_QUEUE_WAIT_S="10")
    try:
        holder = stub.Search.future(search_pb2.SearchRequest(
            query=common_pb2.ImageInput(image_url=slow)), timeout=20)
        wait_for(lambda: web.requests, 10, "the first search to fetch its image")
        waiting = [stub.Search.future(search_pb2.SearchRequest(
            query=common_pb2.ImageInput(image_bytes=noise_image(f"w{i}"))), timeout=20)
            for i in range(4)]
        time.sleep(0.5)  # the four are in the server, waiting for the slot
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Search(search_pb2.SearchRequest(
                query=common_pb2.ImageInput(image_bytes=noise_image("late"))), timeout=20)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - t0 < 1.0  # refused, not queued behind the holder
        for call in [holder, *waiting]:  # admitted in turn (then: no shard serves here)
            with pytest.raises(grpc.RpcError) as answered:
                call.result()
            assert answered.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        web.close()
        assert stop(root) == 0
