"""Every gRPC API refuses calls without the right bearer token (runtime/auth.py).

Real servers with the services' real servicers on a fresh database; the clients are the
suite's own channels (runtime/rpc.py) sending no token, an unknown token, a read token and
an admin token. Refused calls never reach the servicer, so the codes say who answered:
UNAUTHENTICATED / PERMISSION_DENIED from the interceptor, anything else from the service.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from magiclens.v1 import (
    mining_pb2,
    mining_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
    triplegen_pb2,
    triplegen_pb2_grpc,
)

from runtime import auth, rpc
from runtime.config import BaseServiceSettings, load_settings
from runtime.errors import ConfigError
from runtime.grpc_server import GrpcServer
from runtime.service import Service
from services.mining.config import MiningSettings
from services.mining.miner import Miner
from services.mining.server import MiningServicer
from services.mining.server import registration as mining_registration
from services.search.config import RootSettings
from services.search.root import Root
from services.training.config import TrainingSettings
from services.training.server import TrainingServicer
from services.training.server import registration as training_registration
from services.triplegen.server import TripleGenServicer

READ_TOKEN = "read-" + "r" * 27
ADMIN_TOKEN = "admin-" + "a" * 26
TOKENS = auth.Tokens.of([READ_TOKEN], [ADMIN_TOKEN])
UNAUTH, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def servers(fresh_db, infra_servers, tmp_path_factory) -> Iterator[dict[str, str]]:
    """{service: address}: mining, triplegen, training and the search root, in process."""
    data = tmp_path_factory.mktemp("auth")
    common = {"database_url": fresh_db, "kafka_bootstrap_servers": infra_servers.kafka_bootstrap,
              "data_dir": data}
    mining = load_settings(MiningSettings, **common)
    training = load_settings(TrainingSettings, **common)
    root = load_settings(RootSettings, **common, shards="127.0.0.1:9")
    miner = Miner(mining)
    regs = {
        "mining": [mining_registration(MiningServicer(mining, miner))],
        "triplegen": [(triplegen_pb2_grpc.add_TripleGenServiceServicer_to_server,
                       TripleGenServicer(fresh_db, "metadata"), "magiclens.v1.TripleGenService")],
        "training": [training_registration(TrainingServicer(training, None))],
        "search": [(search_pb2_grpc.add_SearchServiceServicer_to_server, Root(root),
                    "magiclens.v1.SearchService")],
    }
    running = {name: GrpcServer(r, port=0, tokens=TOKENS) for name, r in regs.items()}
    addrs = {name: f"127.0.0.1:{s.start()}" for name, s in running.items()}
    yield addrs
    for s in running.values():
        s.stop(0)
    miner.close()


# (service, stub class, method, request, the code an authorised caller gets from the service)
READ_CALLS = [
    ("search", search_pb2_grpc.SearchServiceStub, "Search",
     search_pb2.SearchRequest(instruction="x", k=1000), grpc.StatusCode.INVALID_ARGUMENT),
    ("search", search_pb2_grpc.SearchServiceStub, "GetIndexStatus",
     search_pb2.GetIndexStatusRequest(), grpc.StatusCode.OK),
    ("mining", mining_pb2_grpc.MiningServiceStub, "GetMiningStatus",
     mining_pb2.GetMiningStatusRequest(), grpc.StatusCode.OK),
    ("triplegen", triplegen_pb2_grpc.TripleGenServiceStub, "GetTripleStats",
     triplegen_pb2.GetTripleStatsRequest(), grpc.StatusCode.OK),
    ("training", training_pb2_grpc.TrainingServiceStub, "ListModels",
     training_pb2.ListModelsRequest(), grpc.StatusCode.OK),
]
ADMIN_CALLS = [
    ("mining", mining_pb2_grpc.MiningServiceStub, "SubmitPages",
     mining_pb2.SubmitPagesRequest(urls=["ftp://nope/"]), grpc.StatusCode.OK),
    ("triplegen", triplegen_pb2_grpc.TripleGenServiceStub, "RegenerateTriples",
     triplegen_pb2.RegenerateTriplesRequest(page_url="https://nowhere.example/"),
     grpc.StatusCode.OK),
    ("training", training_pb2_grpc.TrainingServiceStub, "StartTraining",
     training_pb2.StartTrainingRequest(config_name="no-such-config"),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("training", training_pb2_grpc.TrainingServiceStub, "PromoteModel",
     training_pb2.PromoteModelRequest(model_version="no-such-version"),
     grpc.StatusCode.NOT_FOUND),
]


def _code(addr: str, stub_cls, method: str, request, token: str | None) -> grpc.StatusCode:
    """The status of one call sending `token` ('' sends no authorization header)."""
    with rpc.channel(addr, token=token) as ch:
        try:
            getattr(stub_cls(ch), method)(request, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _ids(calls):
    return [f"{c[0]}.{c[2]}" for c in calls]


CALLS = [(*c, c[4]) for c in READ_CALLS] + [(*c, DENIED) for c in ADMIN_CALLS]


@pytest.mark.parametrize("service,stub,method,request_,served,with_read", CALLS,
                         ids=_ids(CALLS))
def test_calls_need_a_known_token_of_the_right_role(servers, service, stub, method, request_,
                                                    served, with_read):
    """No token and an unknown one: UNAUTHENTICATED; a read token on an admin method:
    PERMISSION_DENIED; otherwise the service answers."""
    addr = servers[service]
    assert _code(addr, stub, method, request_, "") == UNAUTH
    assert _code(addr, stub, method, request_, "not-a-token-anyone-issued") == UNAUTH
    assert _code(addr, stub, method, request_, READ_TOKEN) == with_read
    assert _code(addr, stub, method, request_, ADMIN_TOKEN) == served


def test_admin_token_reaches_the_service(servers):
    """What an admin call does, not only its code: the miner rejects the ftp URL itself."""
    with rpc.channel(servers["mining"], token=ADMIN_TOKEN) as ch:
        resp = mining_pb2_grpc.MiningServiceStub(ch).SubmitPages(
            mining_pb2.SubmitPagesRequest(urls=["ftp://nope/"]), timeout=30)
    assert resp.accepted == 0 and any("scheme 'ftp'" in r for r in resp.rejected)


def test_health_is_open_and_refusals_are_one_readable_line(servers):
    with grpc.insecure_channel(servers["training"]) as ch:  # what a Kubernetes probe sends
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    with rpc.channel(servers["training"], token=READ_TOKEN) as ch, \
            pytest.raises(rpc.RpcFailure) as err:
        rpc.call("training", servers["training"], training_pb2_grpc.TrainingServiceStub(ch)
                 .PromoteModel, training_pb2.PromoteModelRequest(model_version="v"), 10)
    assert err.value.code == "PERMISSION_DENIED"
    assert "PromoteModel needs an admin token" in str(err.value)
    assert READ_TOKEN not in str(err.value)


def test_every_rpc_of_every_service_has_a_role():
    """A new RPC must be placed in a role on purpose (unlisted ones need admin)."""
    methods = {f"/{svc.full_name}/{meth.name}"
               for mod in (mining_pb2, search_pb2, training_pb2, triplegen_pb2)
               for svc in mod.DESCRIPTOR.services_by_name.values() for meth in svc.methods}
    assert methods == set(auth.METHOD_ROLES)
    assert auth.required_role("/magiclens.v1.Unknown/Do") == auth.ADMIN
    assert auth.required_role("/grpc.health.v1.Health/Check") is None


def test_tokens_from_the_environment_and_the_local_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MAGICLENS_TOKEN", raising=False)
    monkeypatch.setenv("MAGICLENS_READ_TOKENS", f" {READ_TOKEN} ,")
    monkeypatch.setenv("MAGICLENS_ADMIN_TOKENS", ADMIN_TOKEN)
    tokens = auth.server_tokens()
    assert (tokens.role_of(READ_TOKEN), tokens.role_of(ADMIN_TOKEN),
            tokens.role_of("x" * 40)) == (auth.READ, auth.ADMIN, None)
    monkeypatch.setenv("MAGICLENS_ADMIN_TOKENS", "short")
    with pytest.raises(ConfigError):
        auth.server_tokens()

    # No configuration: the local file, created 0600, is what servers and clients share.
    monkeypatch.delenv("MAGICLENS_READ_TOKENS")
    monkeypatch.delenv("MAGICLENS_ADMIN_TOKENS")
    monkeypatch.setenv("MAGICLENS_HOME", str(tmp_path))
    path = tmp_path / "data" / "infra" / "tokens.json"
    tokens = auth.server_tokens()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_text()
    assert tokens.role_of(auth.client_token(auth.ADMIN)) == auth.ADMIN
    assert tokens.role_of(auth.client_token(auth.READ)) == auth.READ
    assert path.read_text() == before  # found, not made again
    monkeypatch.setenv("MAGICLENS_TOKEN", READ_TOKEN)
    assert auth.client_token(auth.ADMIN) == READ_TOKEN  # MAGICLENS_TOKEN wins


def test_services_bind_loopback_unless_configured(monkeypatch):
    monkeypatch.delenv("MAGICLENS_GRPC_HOST", raising=False)
    svc = Service("t", load_settings(BaseServiceSettings, grpc_port=0))
    server = svc.add_grpc([])
    assert server.host == "127.0.0.1"
    server.stop(0)
    monkeypatch.setenv("MAGICLENS_GRPC_HOST", "0.0.0.0")
    assert load_settings(BaseServiceSettings).grpc_host == "0.0.0.0"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    if subprocess.run(["which", "openssl"], capture_output=True).returncode:
        pytest.skip("no openssl binary")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=t-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=tmp_path)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=tmp_path)
        (tmp_path / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=tmp_path)
    return tmp_path


def test_mutual_tls_with_tokens(pki, monkeypatch):
    monkeypatch.setenv("MAGICLENS_TLS_CERT", str(pki / "server.pem"))
    monkeypatch.setenv("MAGICLENS_TLS_KEY", str(pki / "server.key"))
    monkeypatch.setenv("MAGICLENS_TLS_CA", str(pki / "ca.pem"))
    server = GrpcServer([training_registration(TrainingServicer(
        load_settings(TrainingSettings), None))], port=0, tokens=TOKENS)
    assert server.tls
    addr = f"127.0.0.1:{server.start()}"
    promote = training_pb2.PromoteModelRequest(model_version="")
    try:
        monkeypatch.setenv("MAGICLENS_TLS_CERT", str(pki / "client.pem"))
        monkeypatch.setenv("MAGICLENS_TLS_KEY", str(pki / "client.key"))
        stub = training_pb2_grpc.TrainingServiceStub
        # Past TLS and the token check, the servicer itself refuses the empty version.
        assert _code(addr, stub, "PromoteModel", promote, ADMIN_TOKEN) == \
            grpc.StatusCode.INVALID_ARGUMENT
        assert _code(addr, stub, "PromoteModel", promote, READ_TOKEN) == DENIED
        assert _code(addr, stub, "PromoteModel", promote, "") == UNAUTH
        # No client certificate: the handshake fails, the call never arrives.
        for name in ("MAGICLENS_TLS_CERT", "MAGICLENS_TLS_KEY"):
            os.environ.pop(name)
        assert _code(addr, stub, "PromoteModel", promote, ADMIN_TOKEN) == \
            grpc.StatusCode.UNAVAILABLE
        # Plaintext against the TLS port: refused too.
        with grpc.insecure_channel(addr) as ch, pytest.raises(grpc.RpcError) as err:
            stub(ch).PromoteModel(promote, metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")],
                                  timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
