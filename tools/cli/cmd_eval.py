"""`magiclens eval`: run the trainer's evaluation harness (`python -m trainer.eval`).

The harness owns its arguments (triples file or benchmark directory, checkpoint, output);
everything after `eval` is passed to it unchanged, so the two never drift apart.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

from tools.cli import backends
from tools.cli.errors import CliError, NotBuiltError
from tools.cli.settings import ClientSettings


def run(args: argparse.Namespace, settings: ClientSettings) -> int:
    if not backends.is_built("eval"):
        raise NotBuiltError(f"{backends.describe('eval')} is not built yet "
                            "(no `python -m trainer.eval`)")
    if importlib.util.find_spec("jax") is None:  # a pip install of the core set only
        raise NotBuiltError("evaluation needs the trainer's JAX stack, which this install "
                            "lacks: pip install 'magiclens-suite[services]'")
    proc = subprocess.run([sys.executable, "-m", "trainer.eval", *args.harness_args],
                          check=False)
    if proc.returncode in (0, 1, 2, 3):
        return proc.returncode  # the harness already said what went wrong, in one line
    raise CliError(f"evaluation failed (harness exit {proc.returncode})", code=1)
