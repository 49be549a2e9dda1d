"""Keep one local service running: restart it with back-off when it exits, like the cluster.

    python -m tools.keeper --name NAME --log FILE --state FILE [--backoff S] -- COMMAND...

Why a process per service (started by `tools.procs up`): `./taskw up` returns while the
services keep running, and one keeper that dies takes no other service with it. Standard
library only, so ten keepers cost little memory.

- The service runs in its own session; when it exits, whatever it left in its process group
  (Triton's server and Python backend after a crash) is killed before the restart.
- Back-off doubles from `--backoff` up to `--backoff-max` while the service keeps dying
  within `--healthy-after` seconds of a start, and resets once a run outlasts that.
- Exit code 2 is a bad configuration (runtime/config.run_main): restarting cannot help, so
  the keeper records it and stops.
- The state file (JSON) says what `./taskw ps` shows: state, pid, restarts, last exit code
  and time; a restart is also logged in the service's own log file.
- SIGTERM/SIGINT: stop the service (SIGTERM, then SIGKILL after `--grace`) and exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BAD_CONFIGURATION = 2


def _write_state(path: Path, **state: object) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _note(log: Path, line: str) -> None:
    with open(log, "a") as f:
        f.write(json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "service": "keeper",
                            "level": "WARNING", "msg": line}) + "\n")


class Keeper:
    def __init__(self, name: str, command: list[str], log: Path, state: Path, *,
                 backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 healthy_after_s: float = 30.0, grace_s: float = 20.0) -> None:
        self.name, self.command, self.log, self.state_path = name, command, log, state
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.healthy_after_s, self.grace_s = healthy_after_s, grace_s
        self.stopping = threading.Event()
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_exit_at: str | None = None
        self.child: subprocess.Popen | None = None

    def _state(self, state: str, pid: int | None = None, **extra: object) -> None:
        _write_state(self.state_path, name=self.name, keeper_pid=os.getpid(), state=state,
                     pid=pid, restarts=self.restarts, last_exit=self.last_exit,
                     last_exit_at=self.last_exit_at, **extra)

    def stop(self, *_: object) -> None:
        self.stopping.set()
        if self.child is not None and self.child.poll() is None:
            _kill_group(self.child.pid, signal.SIGTERM)

    def _start(self) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            return subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait(self, child: subprocess.Popen) -> int:
        deadline = None
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping.is_set():
                deadline = deadline or time.monotonic() + self.grace_s
                if time.monotonic() > deadline:
                    _kill_group(child.pid, signal.SIGKILL)

    def run(self) -> int:
        backoff = self.backoff_s
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.child = self._start()
            except OSError as exc:
                self.last_exit, self.last_exit_at = -1, time.strftime("%Y-%m-%dT%H:%M:%S")
                _note(self.log, f"{self.name} could not start: {exc}")
                self._state("failed", reason=str(exc))
                return 1
            self._state("running", self.child.pid, started_at=time.time())
            code = self._wait(self.child)
            # A crashed leader may leave children behind (tritonserver): end the group.
            _kill_group(self.child.pid, signal.SIGKILL)
            if self.stopping.is_set():
                break
            self.last_exit, self.last_exit_at = code, time.strftime("%Y-%m-%dT%H:%M:%S")
            if code == BAD_CONFIGURATION:
                _note(self.log, f"{self.name} exited with code 2 (bad configuration); "
                                "not restarting")
                self._state("failed", reason="bad configuration (exit 2)")
                return 1
            if time.monotonic() - started >= self.healthy_after_s:
                backoff = self.backoff_s
            self.restarts += 1
            _note(self.log, f"{self.name} exited with code {code}; restart {self.restarts} "
                            f"in {backoff:g}s")
            self._state("backoff", None, restart_in_s=backoff)
            if self.stopping.wait(backoff):
                break
            backoff = min(backoff * 2, self.backoff_max_s)
        self._state("stopped")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keeper", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--backoff", type=float, default=1.0)
    parser.add_argument("--backoff-max", type=float, default=60.0)
    parser.add_argument("--healthy-after", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=20.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    keeper = Keeper(args.name, command, args.log, args.state, backoff_s=args.backoff,
                    backoff_max_s=args.backoff_max, healthy_after_s=args.healthy_after,
                    grace_s=args.grace)
    signal.signal(signal.SIGTERM, keeper.stop)
    signal.signal(signal.SIGINT, keeper.stop)
    return keeper.run()


if __name__ == "__main__":
    sys.exit(main())
