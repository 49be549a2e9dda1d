"""Who may call what: bearer tokens in two roles, checked by one gRPC server interceptor.

Every gRPC API of the suite takes `authorization: Bearer <token>` metadata (what
`grpc.access_token_call_credentials` sends, and `grpcurl -H` can). A token has a role:

- `read`: search and every status-like call (Search, GetIndexStatus, shard calls,
  GetRun, ListModels, GetTriple, GetTripleStats, GetPageStatus, GetMiningStatus);
- `admin`: read, plus what spends resources or changes state (StartTraining, PromoteModel,
  ImportModel, RegenerateTriples, SubmitPages, DeleteContent). A method not in METHOD_ROLES
  needs admin (closed by default); only the standard health service is open, because
  Kubernetes probes send no metadata.

A missing or unknown token is UNAUTHENTICATED; a read token on an admin method is
PERMISSION_DENIED.

Where servers find tokens: `MAGICLENS_READ_TOKENS` / `MAGICLENS_ADMIN_TOKENS` (comma-separated,
e.g. from a Kubernetes Secret through `secretKeyRef`), or a JSON file
`{"read": [...], "admin": [...]}` named by `MAGICLENS_TOKEN_FILE` (a mounted Secret). With
none of those set (one machine, no configuration) every process of a checkout shares
`data/infra/tokens.json` under MAGICLENS_HOME, created on first use with mode 0600.

Where clients find their token: `MAGICLENS_TOKEN`, else the token file (the role they ask
for: the CLI and the demo admin, the gateway and the search root read).

Optional TLS, mutual when a CA is given: `MAGICLENS_TLS_CERT` / `MAGICLENS_TLS_KEY` (this
process's certificate and key, PEM paths) and `MAGICLENS_TLS_CA` (the CA that signs the
peers: a server then requires client certificates, a client verifies the server). A client
uses TLS when MAGICLENS_TLS_CA is set.

Tokens are compared as SHA-256 digests in constant time and never logged.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc

from runtime.errors import ConfigError
from runtime.paths import project_root

READ = "read"
ADMIN = "admin"
ROLES = (READ, ADMIN)
MIN_TOKEN_CHARS = 16

METHOD_ROLES: dict[str, str] = {
    "/magiclens.v1.SearchService/Search": READ,
    "/magiclens.v1.SearchService/GetIndexStatus": READ,
    "/magiclens.v1.ShardService/SearchShard": READ,
    "/magiclens.v1.ShardService/GetShardStatus": READ,
    "/magiclens.v1.MiningService/SubmitPages": ADMIN,
    "/magiclens.v1.MiningService/DeleteContent": ADMIN,
    "/magiclens.v1.MiningService/GetPageStatus": READ,
    "/magiclens.v1.MiningService/GetMiningStatus": READ,
    "/magiclens.v1.TrainingService/StartTraining": ADMIN,
    "/magiclens.v1.TrainingService/GetRun": READ,
    "/magiclens.v1.TrainingService/ListModels": READ,
    "/magiclens.v1.TrainingService/PromoteModel": ADMIN,
    "/magiclens.v1.TrainingService/ImportModel": ADMIN,
    "/magiclens.v1.TripleGenService/GetTriple": READ,
    "/magiclens.v1.TripleGenService/RegenerateTriples": ADMIN,
    "/magiclens.v1.TripleGenService/GetTripleStats": READ,
}
# Prefixes: the health service is open (probes); reflection shows the schema to readers.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
READ_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


def required_role(method: str) -> str | None:
    """The role `method` (a full `/package.Service/Method` name) needs; None: open."""
    if method.startswith(OPEN_PREFIXES):
        return None
    if method.startswith(READ_PREFIXES):
        return READ
    return METHOD_ROLES.get(method, ADMIN)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Tokens:
    """The accepted tokens, as digests; admin implies read."""

    read: tuple[bytes, ...]
    admin: tuple[bytes, ...]

    @classmethod
    def of(cls, read: list[str], admin: list[str]) -> Tokens:
        for t in [*read, *admin]:
            if len(t) < MIN_TOKEN_CHARS:
                raise ConfigError(f"a token is shorter than {MIN_TOKEN_CHARS} characters")
        if not read and not admin:
            raise ConfigError("no tokens configured: set MAGICLENS_ADMIN_TOKENS "
                              "(and MAGICLENS_READ_TOKENS) or MAGICLENS_TOKEN_FILE")
        return cls(tuple(_digest(t) for t in read), tuple(_digest(t) for t in admin))

    def role_of(self, token: str) -> str | None:
        d = _digest(token)
        # Compare against every entry (no early exit), so timing says nothing either.
        is_admin = is_read = False
        for a in self.admin:
            is_admin |= hmac.compare_digest(a, d)
        for r in self.read:
            is_read |= hmac.compare_digest(r, d)
        return ADMIN if is_admin else READ if is_read else None


# ------------------------------------------------------------------ where tokens live
def local_token_file() -> Path:
    """The token file of this checkout: MAGICLENS_TOKEN_FILE, else data/infra/tokens.json
    under MAGICLENS_HOME (not MAGICLENS_DATA_DIR: every process of a checkout, whatever data
    directory a test gives it, must find the same file)."""
    explicit = os.environ.get("MAGICLENS_TOKEN_FILE")
    if explicit:
        return Path(explicit)
    return project_root() / "data" / "infra" / "tokens.json"


def _read_file(path: Path) -> dict[str, list[str]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"token file {path}: {exc.__class__.__name__}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"token file {path}: not a JSON object")
    out = {}
    for role in ROLES:
        values = raw.get(role, [])
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"token file {path}: '{role}' must be a list of strings")
        out[role] = [v.strip() for v in values if v.strip()]
    return out


def ensure_local_token_file(path: Path | None = None) -> Path:
    """Create the local token file (one read and one admin token, mode 0600) unless it
    exists; safe when several processes race (the first creator wins, the others read)."""
    path = path or local_token_file()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"read": [secrets.token_urlsafe(32)],
                       "admin": [secrets.token_urlsafe(32)]}, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # atomic, and never replaces a file another process made
    finally:
        tmp.unlink(missing_ok=True)
    return path


def local_tokens() -> dict[str, list[str]]:
    """{role: tokens} of the local token file (created when missing, unless
    MAGICLENS_TOKEN_FILE names it)."""
    path = local_token_file()
    if not os.environ.get("MAGICLENS_TOKEN_FILE"):
        ensure_local_token_file(path)
    return _read_file(path)


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [t.strip() for t in value.split(",") if t.strip()]


def server_tokens() -> Tokens:
    """What a server accepts (see the module docstring for the order)."""
    read, admin = _env_list("MAGICLENS_READ_TOKENS"), _env_list("MAGICLENS_ADMIN_TOKENS")
    if read is not None or admin is not None:
        return Tokens.of(read or [], admin or [])
    got = local_tokens()
    return Tokens.of(got[READ], got[ADMIN])


def client_token(role: str = ADMIN) -> str | None:
    """The token a client sends: MAGICLENS_TOKEN, else the token file's first `role` token
    (created locally when missing); None when neither can be had (the call is then refused
    with UNAUTHENTICATED, which says what is wrong)."""
    # The first of a comma-separated list: a Secret's key may hold several during a rotation.
    token = os.environ.get("MAGICLENS_TOKEN", "").split(",")[0].strip()
    if token:
        return token
    try:
        tokens = local_tokens()
    except (ConfigError, OSError):
        return None
    for r in (role, ADMIN) if role == READ else (role,):
        if tokens.get(r):
            return tokens[r][0]
    return None


# ------------------------------------------------------------------ TLS
def _pem(name: str) -> bytes | None:
    path = os.environ.get(name)
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None


def server_credentials() -> grpc.ServerCredentials | None:
    """TLS server credentials from MAGICLENS_TLS_CERT/KEY (+ _CA: client certificates
    required); None: plaintext."""
    cert, key, ca = _pem("MAGICLENS_TLS_CERT"), _pem("MAGICLENS_TLS_KEY"), _pem("MAGICLENS_TLS_CA")
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("MAGICLENS_TLS_CERT and MAGICLENS_TLS_KEY must be set together")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)


def client_credentials() -> grpc.ChannelCredentials | None:
    """TLS channel credentials when MAGICLENS_TLS_CA is set (with this process's own
    certificate when MAGICLENS_TLS_CERT/KEY are set too); None: plaintext."""
    ca = _pem("MAGICLENS_TLS_CA")
    if ca is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=ca,
                                        private_key=_pem("MAGICLENS_TLS_KEY"),
                                        certificate_chain=_pem("MAGICLENS_TLS_CERT"))


# ------------------------------------------------------------------ interceptors
def _bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str):
    """A handler of the same kind as `handler` that refuses the call."""
    def abort(request, context):
        context.abort(code, message)

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(abort, **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(abort, **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(abort, **kw)
    return grpc.stream_stream_rpc_method_handler(abort, **kw)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls whose bearer token lacks the role the method needs."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        need = required_role(method)
        handler = continuation(handler_call_details)
        if need is None or handler is None:
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        if token is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            "missing 'authorization: Bearer <token>' metadata "
                            "(set MAGICLENS_TOKEN)")
        role = self.tokens.role_of(token)
        if role is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if need == ADMIN and role != ADMIN:
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                            f"{method.rsplit('/', 1)[-1]} needs an admin token")
        return handler


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata",
                                                   "credentials", "wait_for_ready",
                                                   "compression")),
               grpc.ClientCallDetails):
    pass


class BearerInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a plaintext channel (gRPC sends
    call credentials only over TLS or local connections; this is the same header)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d):
        metadata = [*(d.metadata or ()), self._header]
        return _Details(d.method, d.timeout, metadata, d.credentials,
                        getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def secure_channel(addr: str, options: list[tuple[str, object]] | None = None,
                   role: str = ADMIN, token: str | None = None) -> grpc.Channel:
    """A channel to `addr` that sends this process's token (MAGICLENS_TOKEN or the local
    file's `role` token; `token` overrides) over TLS when configured, else in plaintext."""
    token = token if token is not None else client_token(role)
    tls = client_credentials()
    if tls is not None:
        creds = tls if not token else grpc.composite_channel_credentials(
            tls, grpc.access_token_call_credentials(token))
        return grpc.secure_channel(addr, creds, options=options)
    ch = grpc.insecure_channel(addr, options=options)
    return grpc.intercept_channel(ch, BearerInterceptor(token)) if token else ch
