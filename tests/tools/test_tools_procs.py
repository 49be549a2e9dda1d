"""Local supervision: a service that crashes is restarted with back-off (and whatever it left
in its process group is killed), the restart is recorded and shown by `status`; a bad
configuration (exit 2) is not restarted; `down` stops services and keepers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.support.processes import wait_for
from tools import infra
from tools.procs import Supervisor

# Crashes (exit 3) on its first two runs, leaving a grandchild behind each time (as Triton's
# server outlives a crashed PyTriton); then stays up.
FLAKY = """
import os, subprocess, sys, time
runs = os.path.join(sys.argv[1], 'runs')
n = len(open(runs).read()) if os.path.exists(runs) else 0
open(runs, 'a').write('x')
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
open(os.path.join(sys.argv[1], f'grandchild{n}'), 'w').write(str(child.pid))
if n < 2:
    sys.exit(3)
time.sleep(600)
"""


def _procfile(tmp: Path) -> Path:
    (tmp / "flaky.py").write_text(FLAKY)
    path = tmp / "Procfile"
    path.write_text(f"flaky: {sys.executable} {tmp / 'flaky.py'} {tmp}\n"
                    f"badconfig: {sys.executable} -c 'import sys; sys.exit(2)'\n")
    return path


def test_a_crashed_service_is_restarted_with_backoff_and_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGICLENS_DATA_DIR", str(tmp_path / "data"))
    sup = Supervisor(tmp_path, _procfile(tmp_path))
    assert sorted(sup.up(env=dict(os.environ), backoff_s=0.2)) == ["badconfig", "flaky"]
    try:
        wait_for(lambda: sup.details("flaky").get("restarts") == 2
                 and sup.details("flaky").get("state") == "running"
                 and (tmp_path / "grandchild2").exists(), 30,
                 "the flaky service to be restarted twice and stay up")
        wait_for(lambda: sup.details("badconfig").get("state") == "failed", 30,
                 "the badly configured service to be given up on")
        flaky = sup.details("flaky")
        assert flaky["last_exit"] == 3 and infra.pid_alive(flaky["pid"])
        for n in (0, 1):  # what each crash left behind was killed before the restart
            orphan = int((tmp_path / f"grandchild{n}").read_text())
            wait_for(lambda o=orphan: not infra.pid_alive(o), 10, f"crash {n}'s orphan to go")
        lines = "\n".join(sup.status_lines())
        assert "flaky" in lines and "running" in lines and "code 3 at" in lines
        assert "badconfig" in lines and "failed" in lines
        log = (tmp_path / "data" / "logs" / "flaky.log").read_text()
        assert "exited with code 3; restart 2" in log
    finally:
        stopped = sup.down(grace=5)
    assert "flaky" in stopped
    assert not infra.pid_alive(flaky["pid"])
    last = int((tmp_path / "grandchild2").read_text())
    wait_for(lambda: not infra.pid_alive(last), 10, "the running service's children to stop")
    assert sup.running() == {}
