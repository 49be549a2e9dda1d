"""The `magiclens` command line: search, ingest, index, status, train, models, promote, eval.

Every failure a user can cause or meet (a stopped service, a bad argument, a missing file)
ends as ONE line on stderr and a distinct exit code (see tools.cli.errors); set
MAGICLENS_DEBUG=1 to see the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import NoReturn

from runtime.errors import ConfigError, ServiceError
from tools.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError
from tools.cli.parsers import add_commands

PROG = "magiclens"
DISTRIBUTION = "magiclens-suite"  # pyproject.toml's [project] name


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and exit with EXIT_USAGE."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see `{self.prog} --help`)"
        print(f"{PROG}: {message}{hint}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def version() -> str:
    """The installed distribution's version (pyproject.toml's, once installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed: run ./taskw, or pip install the project)"


class _Version(argparse.Action):
    """--version, resolved only when asked (importlib.metadata costs start-up time)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest=dest, nargs=0,
                         help="print the version and exit", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        print(f"{PROG} {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action=_Version)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    add_commands(sub)
    return ap


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the installed `magiclens` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        # Imported only now: `--help` and usage errors stay at argparse's speed.
        from tools.cli.settings import ClientSettings

        module, function = args.run.split(":")
        run = getattr(importlib.import_module(module), function)
        settings = ClientSettings()
        return run(args, settings) or 0
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ServiceError as exc:  # UnavailableError: Postgres and friends
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:  # the promise: one line, never a traceback
        if os.environ.get("MAGICLENS_DEBUG"):
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return _fail(f"{args.command} failed: {type(exc).__name__}"
                     + (f": {first}" if first else ""), EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
