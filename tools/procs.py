"""A small process manager for one machine: start the Procfile's services in the background.

Why not honcho/supervisor: `task up` must return while services keep running, with one log
file per service and PID bookkeeping that `task down` and `task logs` reuse; a Procfile stays
the single definition (the Kubernetes manifests mirror it). Each service runs under a keeper
(tools/keeper.py) that restarts it with back-off when it exits, as the cluster would;
`status` (`./taskw ps`) shows each one's state, restarts and last exit.

    python -m tools.procs up [NAME ...] | down | status | logs [NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.config import project_root
from tools import infra


@dataclass(frozen=True)
class ProcSpec:
    name: str
    command: str


def read_procfile(path: Path) -> list[ProcSpec]:
    specs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"bad Procfile line: {line!r}")
        specs.append(ProcSpec(name.strip(), command.strip()))
    return specs


class Supervisor:
    def __init__(self, root: Path, procfile: Path) -> None:
        self.root = root
        self.procfile = procfile
        self.run_dir = Path(os.environ.get("MAGICLENS_DATA_DIR", root / "data")) / "run"
        self.log_dir = self.run_dir.parent / "logs"
        self.state_file = self.run_dir / "procs.json"

    def _state(self) -> dict[str, int]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict[str, int]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))

    def running(self) -> dict[str, int]:
        """{name: keeper pid} of the services whose keeper is alive."""
        return {n: p for n, p in self._state().items() if infra.pid_alive(p)}

    def state_file_of(self, name: str) -> Path:
        return self.run_dir / f"{name}.state.json"

    def details(self, name: str) -> dict:
        """The keeper's record of a service: state, pid, restarts, last exit."""
        try:
            return json.loads(self.state_file_of(name).read_text())
        except (OSError, ValueError):
            return {}

    def up(self, names: list[str] | None = None, env: dict[str, str] | None = None,
           backoff_s: float | None = None) -> list[str]:
        specs = read_procfile(self.procfile)
        unknown = set(names or []) - {s.name for s in specs}
        if unknown:
            raise SystemExit(f"procs: unknown process(es): {', '.join(sorted(unknown))}")
        state = self.running()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = env or dict(os.environ)
        backoff = backoff_s if backoff_s is not None else float(
            env.get("MAGICLENS_PROCS_BACKOFF_S", "1"))
        started = []
        for spec in specs:
            if (names and spec.name not in names) or spec.name in state:
                continue
            log = self.log_dir / f"{spec.name}.log"
            keeper = [sys.executable, "-m", "tools.keeper", "--name", spec.name,
                      "--log", str(log), "--state", str(self.state_file_of(spec.name)),
                      "--backoff", str(backoff), "--",
                      *shlex.split(os.path.expandvars(spec.command))]
            proc = subprocess.Popen(keeper, cwd=self.root, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
            state[spec.name] = proc.pid
            started.append(spec.name)
        self._save(state)
        return started

    def down(self, grace: float = 20.0) -> list[str]:
        state = self.running()
        for pid in state.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # the keeper stops its service, then itself
        deadline = time.monotonic() + grace + 5
        while time.monotonic() < deadline and any(infra.pid_alive(p) for p in state.values()):
            for pid in state.values():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        for name, pid in state.items():
            if infra.pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            child = self.details(name).get("pid")
            if isinstance(child, int) and child > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child, signal.SIGKILL)  # left by a keeper that was killed
        self._save({})
        return sorted(state)

    def status_lines(self) -> list[str]:
        running = self.running()
        lines = [f"{'service':18} {'state':9} {'pid':>7} {'restarts':>8}  last exit"]
        for spec in read_procfile(self.procfile):
            d = self.details(spec.name)
            if spec.name in running:
                state = d.get("state", "starting")
            else:  # a keeper that gave up (bad configuration) says so; otherwise stopped
                state = "failed" if d.get("state") == "failed" else "stopped"
            pid = d.get("pid") if state == "running" else None
            last = ("-" if d.get("last_exit") is None
                    else f"code {d['last_exit']} at {d.get('last_exit_at', '?')}")
            lines.append(f"{spec.name:18} {state:9} {pid or '-':>7} "
                         f"{d.get('restarts', 0):>8}  {last}")
        return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procs", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "logs"])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--procfile", default="Procfile")
    args = parser.parse_args(argv)
    root = project_root()
    sup = Supervisor(root, root / args.procfile)
    if args.action == "up":
        env = dict(os.environ)
        env.setdefault("MAGICLENS_DATA_DIR", str(sup.run_dir.parent))
        os.environ["MAGICLENS_DATA_DIR"] = env["MAGICLENS_DATA_DIR"]  # for $VARS in Procfile
        env.update(infra.up())
        started = sup.up(args.names or None, env)
        print(f"procs: started {', '.join(started) or 'nothing (all running)'}; "
              f"logs in {sup.log_dir}")
    elif args.action == "down":
        stopped = sup.down()
        print(f"procs: stopped {', '.join(stopped) or 'nothing'}")
    elif args.action == "status":
        print("\n".join(sup.status_lines()))
    else:
        files = [sup.log_dir / f"{n}.log" for n in (args.names or
                 [s.name for s in read_procfile(sup.procfile)])]
        files = [str(f) for f in files if f.exists()]
        if not files:
            print("procs: no logs yet")
            return 0
        os.execvp("tail", ["tail", "-n", "40", "-F", *files])
    return 0


if __name__ == "__main__":
    sys.exit(main())
