"""Command line: ``build`` the corpus, ``serve`` it on 127.0.0.1."""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
from pathlib import Path
from typing import ClassVar

from runtime import ports
from tools.corpus.build import DEFAULT_BASE_URL, build


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".webp": "image/webp", ".html": "text/html; charset=utf-8"}

    def log_message(self, format: str, *args: object) -> None:
        if os.environ.get("CORPUS_SERVE_LOG"):
            super().log_message(format, *args)


def serve(site: Path, port: int) -> None:
    """Static server bound to loopback only: the corpus is for local ingestion tests."""
    if not (site / "index.html").is_file():
        raise SystemExit(f"no site at {site}; run `python -m tools.corpus build` first")
    handler = functools.partial(_Handler, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        print(f"corpus: serving {site} at http://127.0.0.1:{port}/", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            httpd.serve_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.corpus")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build data/corpus")
    b.add_argument("--size", default=os.environ.get("CORPUS_SIZE", "default"),
                   choices=["small", "medium", "default", "full"])
    b.add_argument("--out", type=Path, default=Path("data/corpus"))
    b.add_argument("--cache", type=Path, default=Path(os.environ.get("CORPUS_CACHE",
                                                                     "data/cache")))
    b.add_argument("--base-url", default=os.environ.get("CORPUS_BASE_URL", DEFAULT_BASE_URL))
    s = sub.add_parser("serve", help="serve the built site on 127.0.0.1")
    s.add_argument("--port", type=int, default=ports.CORPUS_SITE.http)
    s.add_argument("--out", type=Path, default=Path("data/corpus"))
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args.out, size=args.size, base_url=args.base_url, cache=args.cache)
    else:
        serve(args.out / "site", args.port)
    return 0
