"""MagicLensClient's own checks: a bad argument is refused before anything is sent (an address
nothing listens on would otherwise answer UNAVAILABLE), with the exception a caller expects;
and each gRPC status name maps to its exception class."""

from __future__ import annotations

import pytest

from magiclens_client import (
    DeadlineExceeded,
    InvalidRequest,
    MagicLensClient,
    MagicLensError,
    NotFound,
    ServiceFailed,
    Unavailable,
)
from magiclens_client.errors import error_for
from runtime.limits import MAX_QUERY_IMAGE_BYTES
from runtime.rpc import RpcFailure
from tests.support.processes import free_port


@pytest.fixture
def client():
    with MagicLensClient(f"127.0.0.1:{free_port()}", token="t", timeout=2,
                         mining_addr=f"127.0.0.1:{free_port()}") as c:
        yield c


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"image": b"", "k": 5}, "empty"),
    ({"image": b"x" * (MAX_QUERY_IMAGE_BYTES + 1)}, "over the 10485760 byte limit"),
    ({"image": 0}, "positive pool image id"),
    ({"image": 1, "k": 0}, "k must be between 1 and 100"),
    ({"image": 1, "k": True}, "k must be between"),
    ({"image": 1, "instruction": "x" * 1001}, "longer than 1000"),
    ({"image": "https://example.org/" + "a" * 2100}, "longer than 2048"),
    ({"image": "/no/such/image.png"}, "no such file"),
])
def test_bad_search_arguments_are_refused_before_sending(client, kwargs, needle):
    with pytest.raises(InvalidRequest) as err:
        client.search(**kwargs)
    assert needle in str(err.value) and err.value.code == "INVALID_ARGUMENT"
    assert isinstance(err.value, ValueError) and isinstance(err.value, RpcFailure)


def test_a_folder_or_an_empty_file_is_not_a_query_image(client, tmp_path):
    with pytest.raises(InvalidRequest, match="not a regular file"):
        client.search(image=tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InvalidRequest, match="the file is empty"):
        client.search(image=tmp_path / "empty.png")
    with pytest.raises(TypeError, match="image must be bytes"):
        client.search(image=1.5)  # type: ignore[arg-type]


def test_a_valid_request_reaches_the_network(client, tmp_path):
    """The same client, arguments fine: the call is made and nothing answers."""
    (tmp_path / "q.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(Unavailable) as err:
        client.search(image=tmp_path / "q.png", instruction="as a sketch")
    assert isinstance(err.value, ConnectionError) and err.value.service == "search"


def test_delete_arguments(client):
    with pytest.raises(InvalidRequest, match="exactly one"):
        client.delete(image_id=1, domain="example.org")
    with pytest.raises(InvalidRequest, match="exactly one"):
        client.delete()
    with pytest.raises(InvalidRequest, match="longer than 500"):
        client.delete(domain="example.org", reason="r" * 501)
    with pytest.raises(Unavailable):
        client.delete(domain="example.org")  # valid: sent to the mining address
    with MagicLensClient(client.addr) as no_mining, pytest.raises(ValueError, match="mining_addr"):
        no_mining.delete(image_id=1)


def test_bad_address_and_timeout_are_value_errors():
    with pytest.raises(ValueError):
        MagicLensClient("no-port-here")
    with pytest.raises(ValueError, match="timeout"):
        MagicLensClient("127.0.0.1:1", timeout=0)


@pytest.mark.parametrize(("code", "cls"), [
    ("NOT_FOUND", NotFound), ("OUT_OF_RANGE", InvalidRequest),
    ("DEADLINE_EXCEEDED", DeadlineExceeded), ("INTERNAL", ServiceFailed),
    ("UNKNOWN", ServiceFailed)])
def test_every_status_has_its_exception(code, cls):
    exc = error_for(RpcFailure("search service: gone", code, "search", "h:1"))
    assert type(exc) is cls and isinstance(exc, MagicLensError)
    assert (str(exc), exc.code, exc.service, exc.addr) == ("search service: gone", code,
                                                           "search", "h:1")
