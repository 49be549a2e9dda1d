"""The project as a package: pyproject.toml's dependencies agree with the lock, and its wheel,
installed with only those into a fresh environment outside the checkout, gives a working
`magiclens` command (version, errors, `index` and `status` on the real PostgreSQL) and the
Python client. (Its search against a real stack: tests/serving/test_serving_client.py.)"""

from __future__ import annotations

import json
import re
import tomllib

import numpy as np
import pytest
import skimage.data
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from tests.support.package import InstalledWheel, install_wheel
from tests.support.processes import ROOT, free_port

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "env" / "main.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(3)
    return pins


def _declared() -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != canonicalize_name(PROJECT["name"])]


def test_pyproject_dependencies_are_ranges_the_lock_satisfies():
    """Every requirement in pyproject.toml is a lower-bounded range that the locked version
    meets, and every package env/main.in asks for is declared (core or an extra)."""
    pins = _lock()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but not in env/main.lock"
        assert any(s.operator in (">=", "~=") for s in req.specifier), \
            f"{req} has no lower bound"
        assert not any(s.operator == "==" for s in req.specifier), f"{req} is a pin, not a range"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{req} does not admit the locked {req.name}=={pins[name]}"
    declared = {canonicalize_name(r.name) for r in _declared()}
    wanted = set()
    for line in (ROOT / "env" / "main.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            wanted.add(canonicalize_name(Requirement(line).name))
    assert wanted - declared == set(), "in env/main.in but not in pyproject.toml"
    assert {"services", "dev"} <= set(PROJECT["optional-dependencies"])


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> InstalledWheel:
    return install_wheel(tmp_path_factory.mktemp("wheel"))


def test_installed_wheel_gives_the_cli_the_client_and_the_generated_code(installed):
    res = installed.run(installed.magiclens, "--version")
    assert res.returncode == 0 and res.stdout == f"magiclens {PROJECT['version']}\n", res
    probe = ("import json, magiclens_client, magiclens.v1.search_pb2 as s, tools.cli.main as m\n"
             "from magiclens_client import MagicLensClient, SearchResult, NotFound\n"
             "print(json.dumps([magiclens_client.__file__, s.__file__, m.__file__]))")
    res = installed.run(installed.python, "-c", probe)
    assert res.returncode == 0, res.stderr[-2000:]
    site = installed.venv / "lib"
    assert all(str(f).startswith(str(site)) for f in json.loads(res.stdout)), res.stdout
    # a command as a user meets it: a stopped service is one line and exit 1
    addr = f"127.0.0.1:{free_port()}"
    res = installed.run(installed.magiclens, "search", "--image", "7", "-q", "red",
                        MAGICLENS_SEARCH_ADDR=addr)
    assert res.returncode == 1 and res.stdout == "", res
    assert res.stderr == (f"magiclens: search service at {addr} is unavailable "
                          "(start it with ./taskw up)\n")
    # no checkout: the local token file is the user's, never among the installed packages
    assert (installed.home / ".local/share/magiclens/data/infra/tokens.json").exists()
    assert not list(site.glob("python3*/site-packages/data"))
    # evaluation needs the services extra, and says so
    res = installed.run(installed.magiclens, "eval", "--config", "compact")
    assert res.returncode == 3 and "magiclens-suite[services]" in res.stderr, res


def test_installed_cli_indexes_a_folder_and_reports_status(installed, own_db, tmp_path):
    """`index` (the miner's decode/dedupe/store code) and `status` from the installed wheel,
    on the real PostgreSQL: the core dependencies are enough for both."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(folder / f"{name}.jpg")
    env = {"DATABASE_URL": own_db, "MAGICLENS_BLOB_URI": f"file://{tmp_path / 'blobs'}",
           "MAGICLENS_SEARCH_ADDR": f"127.0.0.1:{free_port()}"}
    res = installed.run(installed.magiclens, "index", "--images", folder, "--json", **env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["accepted"] == 3 and data["new_images"] == 3
    assert len([p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]) == 3
    res = installed.run(installed.magiclens, "status", "--json", **env)
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert status["counts"]["images"] == {"mined": 3}
    assert status["search"]["available"] is False
