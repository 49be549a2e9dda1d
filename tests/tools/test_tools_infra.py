"""`infra up` / `infra down` on their own ports and data directory: idempotent, no leftovers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import free_port


def _infra(action: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.infra", action], env=env,
                          capture_output=True, text=True, timeout=120)


def _live_pids(pattern: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line contains pattern."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if pattern in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def isolated_env(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    data = tmp_path / "data"
    env.update(MAGICLENS_DATA_DIR=str(data), MAGICLENS_PG_PORT=str(free_port()),
               MAGICLENS_KAFKA_PORT=str(free_port()))
    yield env
    _infra("down", env)


def test_up_twice_is_harmless_and_down_leaves_no_process(isolated_env):
    first = _infra("up", isolated_env)
    assert first.returncode == 0, first.stderr
    second = _infra("up", isolated_env)
    assert second.returncode == 0 and second.stdout == first.stdout
    data_dir = isolated_env["MAGICLENS_DATA_DIR"]
    assert _live_pids(data_dir), "postgres should be running from the test's data directory"
    status = _infra("status", isolated_env).stdout
    assert "postgres: running" in status and "kafka: running" in status
    down = _infra("down", isolated_env)
    assert down.returncode == 0, down.stderr
    assert _live_pids(data_dir) == []
    assert _live_pids(f"tcp://127.0.0.1:{isolated_env['MAGICLENS_KAFKA_PORT']}") == []
    assert "stopped" in _infra("status", isolated_env).stdout


def test_taken_port_is_a_clear_error(isolated_env):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(isolated_env["MAGICLENS_KAFKA_PORT"])))
        blocker.listen()
        env = dict(isolated_env, DATABASE_URL="postgresql://postgres@127.0.0.1:1/x")
        res = _infra("up", env)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "already taken" in res.stderr


def test_external_servers_start_nothing(isolated_env):
    env = dict(isolated_env, DATABASE_URL="postgresql://postgres@db.example:5432/m",
               KAFKA_BOOTSTRAP_SERVERS="kafka.example:9092")
    res = _infra("up", env)
    assert res.returncode == 0
    assert "db.example" in res.stdout and not Path(env["MAGICLENS_DATA_DIR"], "infra",
                                                    "postgres").exists()
    assert "external" in _infra("status", env).stdout


def test_missing_broker_binary_is_a_clear_error(isolated_env):
    env = dict(isolated_env, DATABASE_URL="postgresql://postgres@127.0.0.1:1/x",
               MAGICLENS_TANSU_BIN="/nonexistent/tansu")
    res = _infra("up", env)
    assert res.returncode == 1 and "MAGICLENS_TANSU_BIN" in res.stderr
