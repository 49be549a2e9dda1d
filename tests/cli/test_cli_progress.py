"""Progress bars of `magiclens index` and `magiclens ingest`, as the real commands draw them:
on a terminal's stderr (a pseudo-terminal here), never with --json, never into a pipe."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tests.mining.mining_support import noise_image
from tests.support.processes import ROOT, free_port, start, stop, wait_grpc

EXE = Path(sys.executable).with_name("magiclens")
BAR = "%|"  # tqdm's bar: "desc:  40%|████      | 4/10 [...]"


def run_cli(argv: list[str], env: dict[str, str], terminal: bool,
            columns: int = 100) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `magiclens argv`, its stderr a pseudo-terminal of
    `columns` when `terminal` (so isatty() is true in the command), else a pipe."""
    cmd = [str(EXE), *argv]
    if not terminal:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=300, check=False)
        return res.returncode, res.stdout, res.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                            env=env, cwd=ROOT)
    os.close(slave)
    err = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 300)
            if not ready:
                raise TimeoutError("magiclens wrote nothing for 300 s")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed (the process ended)
                break
            if not chunk:
                break
            err += chunk
        out = proc.stdout.read().decode()
        code = proc.wait(60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, out, err.decode(errors="replace")


@pytest.fixture
def env(own_db, tmp_path) -> dict[str, str]:
    return dict(os.environ, DATABASE_URL=own_db, MAGICLENS_BLOB_URI=f"file://{tmp_path / 'blobs'}",
                MAGICLENS_DATA_DIR=str(tmp_path / "data"), COLUMNS="100")


def test_index_draws_a_bar_on_a_terminal_only(env, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(40):
        (folder / f"n{i:02d}.png").write_bytes(noise_image(f"progress-{tmp_path.name}-{i}",
                                                           200, 160))
    argv = ["index", "--images", str(folder)]

    code, out, err = run_cli(argv, env, terminal=True)
    assert code == 0, err
    assert "checking images" in err and BAR in err and "/40" in err, err
    assert "storing 40 images" in err, err
    assert out.startswith("indexed 40 of 40 files")  # the result stays on stdout, bar-free
    assert "\r" not in out and BAR not in out

    # a terminal that reports no size (some CI ptys) still gets a bar, 80 columns wide
    code, out, err = run_cli(argv, env, terminal=True, columns=0)
    assert code == 0 and "checking images" in err and BAR in err, err

    code, out, err = run_cli([*argv, "--json"], env, terminal=True)  # --json: no bar
    assert code == 0 and err == "", err
    assert json.loads(out)["accepted"] == 40

    code, out, err = run_cli(argv, env, terminal=False)  # a pipe: no bar
    assert code == 0 and err == "", err
    assert out.startswith("indexed 40 of 40 files")


def _warc(path: Path, pages: int) -> Path:
    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for p in range(pages):
            base = f"http://progress-{path.stem}.example.org/p{p}"
            for url, ctype, body in (
                    (f"{base}.html", "text/html",
                     f"<title>Page {p}</title><img src='p{p}.png' alt='{p}'>".encode()),
                    (f"{base}.png", "image/png", noise_image(f"{path.stem}-{p}", 120, 90))):
                headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)],
                                           protocol="HTTP/1.1")
                w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                    http_headers=headers))
    return path


def test_ingest_draws_bars_on_a_terminal_only(env, infra_servers, unique, tmp_path):
    """A WARC through the real mining service's SubmitPages: bars for the bytes read and the
    pages submitted on a terminal; none with --json or into a pipe."""
    port = free_port()
    mining = start("services.mining", log=tmp_path / "mining.log", env=dict(
        env, KAFKA_BOOTSTRAP_SERVERS=infra_servers.kafka_bootstrap,
        MAGICLENS_MINING_PAGES_TOPIC=f"test.mining.pages.{unique}",
        MAGICLENS_MINING_GROUP=f"g-{unique}", MAGICLENS_GRPC_PORT=str(port),
        MAGICLENS_METRICS_PORT="0"))
    addr = f"127.0.0.1:{port}"
    try:
        wait_grpc(port, proc=mining, log=tmp_path / "mining.log").close()
        cli_env = dict(env, MAGICLENS_MINING_ADDR=addr)
        # a WARC of new pages per run: pages already queued would be reported on stderr
        warc = _warc(tmp_path / f"w{unique}-tty.warc.gz", 30)
        code, out, err = run_cli(["ingest", "--warc", str(warc)], cli_env, terminal=True)
        assert code == 0, err
        assert f"reading {warc.name}" in err and BAR in err, err
        assert "submitting" in err and "/30" in err, err
        assert "submitted 30 pages" in out and BAR not in out

        warc = _warc(tmp_path / f"w{unique}-json.warc.gz", 30)
        code, out, err = run_cli(["ingest", "--warc", str(warc), "--json"], cli_env,
                                 terminal=True)
        assert code == 0 and err == "", err
        assert json.loads(out)["ok"] is True

        warc = _warc(tmp_path / f"w{unique}-pipe.warc.gz", 30)
        code, out, err = run_cli(["ingest", "--warc", str(warc)], cli_env, terminal=False)
        assert code == 0 and err == "", err
        assert "submitted 30 pages" in out
    finally:
        stop(mining)
