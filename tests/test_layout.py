"""The layout holds: folders say what runs, and nothing reaches into a neighbour.

- services/<name>/ is a deployable: the Procfile or the deployment catalog runs it, it has a
  `config` module, and its SQL is in its `store` module;
- a service imports the runtime, its own modules, the trainer, generated code and
  third-party packages; never another service's modules, never a tool;
- the runtime imports no service and no tool; the trainer imports none of the suite's own
  packages (it stands alone);
- tools may use a service's modules (the CLI indexes a folder through the miner);
- the Python client (magiclens_client) imports the runtime, generated code and gRPC only.

Imports are read with `ast` from every module, at any depth (inside functions too).
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import catalog
from tests.support.processes import ROOT

SUITE = ("runtime", "services", "tools", "trainer", "deploy", "bench", "tests")


def modules(root: Path, folder: str) -> Iterator[Path]:
    yield from sorted((root / folder).rglob("*.py"))


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every import in `path`; `from a import b` yields a.b too,
    since b may be a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(root, path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else module_name(root, path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def service_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" else None


def violations(root: Path) -> list[str]:
    """Every import that breaks the rules above, as `file:line: imports module (why)`."""
    out = []
    for path in modules(root, "services"):
        owner = path.relative_to(root).parts[1] if len(path.relative_to(root).parts) > 2 else None
        for line, mod in imports(root, path):
            top = mod.split(".")[0]
            other = service_of(mod)
            if owner and other and other != owner:
                out.append(f"{path.relative_to(root)}:{line}: imports {mod} "
                           f"(service {owner} reaches into service {other})")
            elif top in ("tools", "tests", "deploy", "bench"):
                out.append(f"{path.relative_to(root)}:{line}: imports {mod} (a service "
                           f"imports {top}/)")
    for folder, banned in (("runtime", ("services", "tools", "tests", "deploy", "bench")),
                           ("trainer", tuple(p for p in SUITE if p != "trainer")),
                           ("magiclens_client", ("services", "tools", "trainer", "tests",
                                                 "deploy", "bench"))):
        for path in modules(root, folder):
            for line, mod in imports(root, path):
                if mod.split(".")[0] in banned:
                    out.append(f"{path.relative_to(root)}:{line}: imports {mod} "
                               f"({folder}/ imports {mod.split('.')[0]}/)")
    return sorted(set(out))


def sql_outside_store(root: Path) -> list[str]:
    """`conn.execute(...)` (or executemany) in a service module other than its store."""
    out = []
    for path in modules(root, "services"):
        if path.name == "store.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("execute", "executemany")
                    and not (isinstance(node.func.value, ast.Name)
                             and node.func.value.id == "self")):
                out.append(f"{path.relative_to(root)}:{node.lineno}")
    return out


def test_no_service_imports_another_service_or_a_tool_and_runtime_and_trainer_stand_alone():
    assert violations(ROOT) == []


def test_the_check_catches_a_forbidden_import(tmp_path):
    """The check itself: a service importing a neighbour, or the runtime importing a tool,
    is reported (with file and line), an import of its own service is not."""
    for rel, text in {
        "services/__init__.py": "",
        "services/alpha/__init__.py": "",
        "services/alpha/server.py": "from services.alpha import store\n"
                                   "from services.beta.store import rows\n",
        "services/alpha/store.py": "def f():\n    from services import beta\n",
        "services/beta/__init__.py": "",
        "services/beta/store.py": "from . import rows\nfrom tools.cli import main\n",
        "runtime/config.py": "from tools import infra\n",
        "trainer/train.py": "import runtime.limits\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = violations(tmp_path)
    for expected in ("services/alpha/server.py:2: imports services.beta.store",
                     "services/alpha/store.py:2: imports services.beta",
                     "services/beta/store.py:2: imports tools.cli",
                     "runtime/config.py:1: imports tools",
                     "trainer/train.py:1: imports runtime.limits"):
        assert any(v.startswith(expected) for v in found), (expected, found)
    assert not any("services.alpha.store" in v or "services.beta.rows" in v for v in found)


def test_every_service_folder_is_a_deployable_with_config_and_its_sql_in_store():
    procfile = (ROOT / "Procfile").read_text()
    run = set(re.findall(r"-m (services\.[a-z_.]+)", procfile))
    run |= {w.module for w in catalog.WORKLOADS}
    run |= {w.sidecar.module for w in catalog.WORKLOADS if w.sidecar}
    folders = sorted(p.name for p in (ROOT / "services").iterdir()
                     if p.is_dir() and (p / "__init__.py").exists())
    for name in folders:
        assert any(service_of(m) == name for m in run), f"services/{name} is not run"
        assert (ROOT / "services" / name / "config.py").exists(), f"services/{name}: no config"
    for module in run:
        if module.startswith("services."):
            path = ROOT / Path(*module.split("."))
            assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), module
    assert sql_outside_store(ROOT) == []


@pytest.mark.parametrize("folder", ["runtime", "services", "tools", "tests", "bench"])
def test_no_module_edits_sys_path(folder):
    """Packages are found because they are packages (tests/ included), not by path edits."""
    for path in modules(ROOT, folder):
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.Attribute) and node.attr == "path"
                        and isinstance(node.value, ast.Name) and node.value.id == "sys"), (
                f"{path.relative_to(ROOT)}:{node.lineno} uses sys.path")


def test_the_triton_server_loads_only_what_its_environment_has():
    """The server runs in .venv-triton (numpy<2, no scann, no Postgres or Kafka clients):
    of the suite's own modules it may load only these, which need nothing more."""
    python = ROOT / ".venv-triton" / "bin" / "python"
    if not python.exists():
        pytest.skip(".venv-triton is missing (./taskw sets it up)")
    code = ("import sys, services.embedding.server; print(' '.join(sorted(m for m in "
            "sys.modules if m.split('.')[0] in ('runtime', 'services', 'tools'))))")
    res = subprocess.run([str(python), "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert set(res.stdout.split()) <= {
        "runtime", "runtime.image_input", "runtime.limits", "runtime.ports", "runtime.tracing",
        "services",
        "services.embedding", "services.embedding.current", "services.embedding.model",
        "services.embedding.server"}, res.stdout
