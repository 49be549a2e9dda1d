"""CLI error paths: one line on stderr, the documented exit codes, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import free_port
from tools.cli import backends
from tools.cli.errors import EXIT_FAILED, EXIT_NOT_BUILT, EXIT_USAGE
from tools.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def nowhere(monkeypatch) -> str:
    """Point every service address at a port nothing listens on."""
    addr = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("MAGICLENS_SEARCH_ADDR", addr)
    monkeypatch.setenv("MAGICLENS_TRAINING_ADDR", addr)
    monkeypatch.setenv("MAGICLENS_RPC_TIMEOUT_S", "3")
    return addr


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"want one line on stderr, got {lines!r}"
    assert lines[0].startswith("magiclens: ")
    assert "Traceback" not in err
    return lines[0]


def _expect_unreachable(service: str, addr: str, code: int, err: str) -> None:
    line = _one_line(err)
    if backends.is_built(service):
        assert code == EXIT_FAILED
        assert line == (f"magiclens: {service} service at {addr} is unavailable "
                        "(start it with ./taskw up)")
    else:
        assert code == EXIT_NOT_BUILT
        assert "not built yet" in line and addr in line


def test_search_unreachable_is_one_line(nowhere, capsys):
    code = main(["search", "--image", "42", "--instruction", "as a sketch"])
    _expect_unreachable("search", nowhere, code, capsys.readouterr().err)


@pytest.mark.parametrize("argv", [["models"], ["promote", "v1"],
                                  ["train", "--config", "compact", "--steps", "5"]])
def test_training_unreachable_is_one_line(nowhere, capsys, argv):
    code = main(argv)
    _expect_unreachable("training", nowhere, code, capsys.readouterr().err)


@pytest.mark.parametrize(("argv", "needle"), [
    (["search", "--image", "/no/such/file.png"], "no such file"),
    (["search", "--image", "42", "-k", "0"], "-k must be between 1 and 100"),
    (["search", "--image", "42", "-q", "x" * 1001], "longer than 1000"),
    (["search", "--image", "   "], "--image is empty"),
    (["search"], "give --image, --instruction, or both"),
    (["search", "-q", "   "], "give --image, --instruction, or both"),
    (["index", "--images", "/no/such/dir"], "not a folder"),
    (["ingest"], "needs --url, --sitemap or --warc"),
    (["ingest", "--warc", "/no/such.warc.gz"], "no such file"),
    (["ingest", "--url", "ftp://example.org/x"], "scheme 'ftp' not allowed"),
    (["train", "--steps", "-3"], "--steps must be >= 0"),
])
def test_bad_arguments_exit_2_with_one_line(nowhere, capsys, argv, needle):
    assert main(argv) == EXIT_USAGE
    assert needle in _one_line(capsys.readouterr().err)


def test_oversized_query_image_is_refused(nowhere, capsys, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (10 * 1024 * 1024 + 1))
    assert main(["search", "--image", str(big)]) == EXIT_USAGE
    assert "over the 10485760 byte limit" in _one_line(capsys.readouterr().err)


def test_empty_image_folder_and_bad_captions(nowhere, capsys, tmp_path):
    assert main(["index", "--images", str(tmp_path)]) == EXIT_USAGE
    assert "no image files" in _one_line(capsys.readouterr().err)
    bad = tmp_path / "caps.json"
    bad.write_text("[1, 2")
    (tmp_path / "a.png").write_bytes(b"x")
    assert main(["index", "--images", str(tmp_path), "--captions", str(bad)]) == EXIT_USAGE
    assert "not valid JSON" in _one_line(capsys.readouterr().err)


def test_argparse_errors_are_one_line(capsys):
    for argv in ([], ["bogus"], ["search", "--k"], ["train", "--config", "huge"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == EXIT_USAGE
        _one_line(capsys.readouterr().err)


def test_bad_configuration_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("MAGICLENS_SEARCH_ADDR", "no-port-here")
    assert main(["search", "--image", "1"]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert "search_addr" in line.lower() and "host:port" in line


def test_status_with_postgres_down_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    assert main(["status"]) == EXIT_FAILED
    assert "unreachable" in _one_line(capsys.readouterr().err)


def test_eval_with_a_missing_input_is_one_line(capfd):
    """`magiclens eval` runs `python -m trainer.eval`; a bad path is one line, exit code 2."""
    assert main(["eval", "--config", "compact", "--triples", "/nonexistent/x.jsonl"]) == 2
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "does not exist" in err[0]


def test_installed_entry_point_one_line_and_json_flag(tmp_path):
    """The real `magiclens` process: exit code and stderr as a user sees them."""
    exe = Path(sys.executable).with_name("magiclens")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tools.cli.main"]
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "MAGICLENS_SEARCH_ADDR": f"127.0.0.1:{port}",
           "PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}", "MAGICLENS_HOME": str(ROOT)}
    proc = subprocess.run([*cmd, "search", "--image", "7", "-q", "red", "--json"],
                          capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert proc.stdout == ""
    _expect_unreachable("search", f"127.0.0.1:{port}", proc.returncode, proc.stderr)


def test_help_and_search_import_only_what_they_use():
    """`magiclens --help` loads argparse's grammar and none of gRPC, protobuf, pydantic or
    psycopg; `search` loads gRPC but neither pydantic nor psycopg (bench/cli.py times both)."""
    probe = ("import sys\n"
             "from tools.cli.main import build_parser\n"
             "build_parser().format_help()\n"
             "heavy = ('grpc', 'google.protobuf', 'pydantic', 'psycopg')\n"
             "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(heavy)}))\n"
             "import tools.cli.cmd_search\n"
             "from tools.cli.settings import ClientSettings\n"
             "ClientSettings()\n"
             "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(heavy)}))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout.splitlines()
    assert out[0] == "[]"
    assert "grpc" in out[1] and "pydantic" not in out[1] and "psycopg" not in out[1]


def test_version_prints_the_installed_distributions_version():
    """`magiclens --version` prints pyproject.toml's version (the project is installed into
    the environment by setup) and exits 0, before any command is required."""
    import tomllib

    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    proc = subprocess.run([sys.executable, "-m", "tools.cli.main", "--version"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"magiclens {want}"
