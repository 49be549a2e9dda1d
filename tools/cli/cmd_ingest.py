"""`magiclens ingest`: submit pages (URL, sitemap, WARC) through tools.ingest (the mining
service's SubmitPages call, with an admin token)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys

from runtime.rpc import RpcFailure
from services.mining.urls import BadUrl, normalise
from tools.cli import backends, progress
from tools.cli.errors import CliError, NotBuiltError, UsageError
from tools.cli.rpc import cli_error
from tools.cli.settings import ClientSettings


def run(args: argparse.Namespace, settings: ClientSettings) -> int:
    if not (args.url or args.sitemap or args.warc):
        raise UsageError("ingest needs --url, --sitemap or --warc")
    for label, path in (("--warc", args.warc), ("--heldout-file", args.heldout_file)):
        if path is not None and not path.is_file():
            raise UsageError(f"{label} {path}: no such file")
    if args.max_pages < 1:
        raise UsageError("--max-pages must be at least 1")
    if not backends.is_built("ingest"):
        raise NotBuiltError(f"{backends.describe('ingest')} is not built yet")
    # Loaded only once the backend is known to exist (above), and only by this command: the
    # ingest tool pulls in the miner's fetcher, which doubles the CLI's start time.
    from tools.ingest.__main__ import main as ingest_main

    for u in args.url or []:
        try:
            normalise(u)
        except BadUrl as exc:
            raise UsageError(f"--url {u[:200]}: {exc}") from None

    argv: list[str] = []
    for u in args.url or []:
        argv += ["--url", u]
    if args.sitemap:
        argv += ["--sitemap", args.sitemap]
    if args.warc:
        argv += ["--warc", str(args.warc)]
    if args.source:
        argv += ["--source", args.source]
    if args.allow_private:
        argv.append("--allow-private")
    if args.heldout_file:
        argv += ["--heldout-file", str(args.heldout_file)]
    argv += ["--max-pages", str(args.max_pages)]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = ingest_main(argv, show_progress=progress.wanted(args.json))
    except SystemExit as exc:  # its argparse; our own checks make this unlikely
        raise UsageError(f"ingest refused the arguments (exit {exc.code})") from None
    except RpcFailure as exc:
        raise cli_error(exc) from None
    text = out.getvalue().strip()
    if code:
        raise CliError(text.splitlines()[-1] if text else f"ingest failed (exit {code})")
    if args.json:
        json.dump({"ok": True, "message": text}, sys.stdout)
        sys.stdout.write("\n")
    elif text:
        print(text)
    return 0
