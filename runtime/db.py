"""PostgreSQL access: connections with clear errors, and the versioned migration runner.

Migrations are plain SQL files `migrations/NNNN_name.sql`, applied in order inside one
transaction each under an advisory lock, recorded with a checksum so an edited, already
applied migration is caught instead of silently diverging.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from runtime.config import BaseServiceSettings, load_settings
from runtime.errors import UnavailableError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_ID = 0x4D61_6769_634C  # "MagicL": serialises concurrent migrators


def _redact(url: str) -> str:
    return re.sub(r"//([^:@/]+):[^@/]*@", r"//\1:***@", url)


def connect(url: str, *, autocommit: bool = False, timeout: float = 5.0) -> psycopg.Connection:
    """Open a connection, turning every failure into one clear UnavailableError line."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout)),
                               row_factory=dict_row)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnavailableError(f"PostgreSQL at {_redact(url)} is unreachable: {first}") from exc


# SQLSTATEs that mean "the server is going away or not accepting connections yet":
# admin_shutdown, crash_shutdown, cannot_connect_now. With class 08 (connection exceptions)
# these are the only database errors a consumer waits out instead of counting them against
# the event (issue 14: ProgramLimitExceeded is an OperationalError too, and is bad data).
_OUTAGE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def is_outage(exc: BaseException, conn: psycopg.Connection | None = None) -> bool:
    """True when `exc` says PostgreSQL cannot be reached (wait it out and retry for free);
    False for every other error, which is the work's own fault (count it, dead-letter it)."""
    if isinstance(exc, UnavailableError):
        return True
    if conn is not None and (conn.closed or conn.broken):
        return True
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:  # raised by the client itself: a lost or closed connection
            return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
        return state.startswith("08") or state in _OUTAGE_SQLSTATES
    return False


@contextmanager
def transaction(url: str) -> Iterator[psycopg.Connection]:
    """One connection, one transaction: committed on success, rolled back on error."""
    conn = connect(url)
    try:
        with conn.transaction():
            yield conn
    finally:
        conn.close()


class Pool:
    """Reusable autocommit connections for request paths (a search opened 2-3 connections
    per request, ~8 ms each): psycopg_pool keeps them, checks each on checkout and replaces
    broken ones in the background.

    When the pool has no connection to give within `wait_s` (a database outage, or every
    pooled connection busy), the request connects directly: in an outage that fails at
    once with UnavailableError (the caller answers UNAVAILABLE), and once the database is
    back it works at once, whereas the pool's own reconnection backs off for up to tens of
    seconds."""

    def __init__(self, url: str, *, name: str, min_size: int = 1, max_size: int = 8,
                 wait_s: float = 0.25, timeout: float = 5.0) -> None:
        from psycopg_pool import ConnectionPool

        self.url, self.wait_s, self.timeout = url, wait_s, timeout
        self._pool = ConnectionPool(
            url, name=name, min_size=min_size, max_size=max_size, open=False,
            kwargs={"autocommit": True, "row_factory": dict_row,
                    "connect_timeout": max(1, int(timeout))},
            check=ConnectionPool.check_connection, timeout=wait_s)
        self._pool.open(wait=False)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        from psycopg_pool import PoolTimeout

        try:
            conn = self._pool.getconn(timeout=self.wait_s)
        except PoolTimeout:
            with connect(self.url, autocommit=True, timeout=self.timeout) as direct:
                yield direct
            return
        try:
            yield conn
        finally:
            self._pool.putconn(conn)  # a broken connection is discarded, not reused

    def stats(self) -> dict[str, int]:
        return self._pool.get_stats()

    def close(self) -> None:
        self._pool.close(timeout=2.0)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _MIGRATION_RE.match(path.name)
        if not m:
            raise ValueError(f"badly named migration file {path.name} (want NNNN_name.sql)")
        found.append(Migration(int(m.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError("two migrations share a version number")
    return found


def migrate(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    applied_now: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                version INT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now())""")
            done = {r["version"]: r for r in
                    conn.execute("SELECT version, name, checksum FROM schema_migrations")}
            for mig in load_migrations(directory):
                if mig.version in done:
                    if done[mig.version]["checksum"] != mig.checksum:
                        raise RuntimeError(
                            f"migration {mig.name} was edited after being applied "
                            "(write a new migration instead)")
                    continue
                with conn.transaction():
                    conn.execute(mig.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)", (mig.version, mig.name, mig.checksum))
                applied_now.append(mig.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now


def main() -> int:

    settings = load_settings(BaseServiceSettings)
    try:
        names = migrate(settings.database_url)
    except UnavailableError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    print("migrate: " + (f"applied {', '.join(names)}" if names else "schema is up to date"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
