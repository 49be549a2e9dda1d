"""The command line's grammar: every command's arguments, and which function runs it.

Kept apart from the commands themselves so that `magiclens --help` (and a mistyped
argument) imports argparse and nothing else: each command's module, with gRPC, protobuf,
pydantic and psycopg behind it, is imported only when that command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.limits import MAX_K


def _search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="rank pool images by a query image and an instruction, "
                       "or by text alone")
    p.add_argument("--image", help="query image: a file, an http(s) URL or a pool image id "
                   "(leave out to search by --instruction alone)")
    p.add_argument("--instruction", "-q", default="", help="what to find, e.g. 'as a sketch'; "
                   "without --image, a description: 'a red double-decker bus'")
    p.add_argument("-k", type=int, default=10,
                   help=f"number of results, 1..{MAX_K} (default 10)")
    p.add_argument("--source", default="", help="only images from this source label")
    p.add_argument("--domain", default="", help="only images from pages on this domain")
    p.add_argument("--include-query-image", action="store_true",
                   help="keep the query image and its copies (same bytes, re-encodes, resizes) "
                   "in the results; by default they are left out")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="tools.cli.cmd_search:run")


def _ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="queue web pages for mining (URL, sitemap or WARC)")
    p.add_argument("--url", action="append", help="a page URL (repeatable)")
    p.add_argument("--sitemap", help="a sitemap or sitemap index URL")
    p.add_argument("--warc", type=Path, help="a WARC(.gz) file")
    p.add_argument("--source", default="", help="source label (default web/sitemap/warc)")
    p.add_argument("--allow-private", action="store_true",
                   help="allow reading a sitemap from a private/loopback address")
    p.add_argument("--heldout-file", type=Path, help="file of URLs to mark as held out")
    p.add_argument("--max-pages", type=int, default=50_000)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="tools.cli.cmd_ingest:run")


def _index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="add a folder of images to the pool")
    p.add_argument("--images", type=Path, required=True, help="folder of image files")
    p.add_argument("--captions", type=Path,
                   help="captions: JSON {file name: caption} or lines 'file name<TAB>caption'")
    p.add_argument("--title", default="", help="title of the synthetic page (default: folder)")
    p.add_argument("--source", default="upload", help="source label (default upload)")
    p.add_argument("--recursive", action="store_true", help="include sub-folders")
    p.add_argument("--pairs", action="store_true",
                   help="also pair the folder's images for training (as one web page would)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="tools.cli.cmd_index:run")


def _status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="pipeline counts, models and index size")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="tools.cli.cmd_status:run")


def _training(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="start a training run (training service)")
    p.add_argument("--config", choices=["compact", "base", "large", "clip_tiny"],
                   help="default compact, or with --init that version's config (clip_tiny: "
                   "the released architecture at test size)")
    p.add_argument("--init", metavar="VERSION", default="",
                   help="start from this model version's weights (e.g. an imported released "
                   "checkpoint; needed for base and large)")
    p.add_argument("--steps", type=int, default=0, help="0 = the config's default")
    p.add_argument("--mode", default="frozen", choices=["frozen", "full"])
    p.add_argument("--wait", action="store_true", help="follow the run until it ends")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="tools.cli.cmd_training:run_train")
    p = sub.add_parser("models", help="list model versions and their metrics; "
                       "`models import` registers a released checkpoint")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="tools.cli.cmd_training:run_models")
    msub = p.add_subparsers(dest="models_command", metavar="{import}")
    imp = msub.add_parser(
        "import", help="register a released (or converted) MagicLens checkpoint",
        description="Upload a released MagicLens checkpoint in the safe format (flax msgpack, "
        "the payload of the released .pkl; convert a .pkl once with `python -m "
        "trainer.weights.released FILE.pkl --config base --msgpack FILE.msgpack`) and register "
        "it as a published model version (admin). Serve it with `magiclens promote VERSION`, "
        "fine-tune it with `magiclens train --init VERSION`.")
    imp.add_argument("file", type=Path, help="the checkpoint file (.msgpack)")
    imp.add_argument("--config", required=True, choices=["base", "large", "clip_tiny"],
                     help="the architecture (clip_tiny: the same tree at test size)")
    imp.add_argument("--name", default="", help="the model version's name (default "
                     "<config>-import-<time>-<id>)")
    imp.add_argument("--json", action="store_true", help="print JSON")
    imp.set_defaults(run="tools.cli.cmd_training:run_import")
    p = sub.add_parser("promote", help="make a model version the one search serves")
    p.add_argument("model_version")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="tools.cli.cmd_training:run_promote")


def _eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a triples file or benchmark directory",
                       add_help=False, prefix_chars="\0")
    p.add_argument("harness_args", nargs=argparse.REMAINDER,
                   help="arguments for the evaluation harness (see `magiclens eval --help`)")
    p.set_defaults(run="tools.cli.cmd_eval:run")


def _delete(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("delete", help="take content down: an image, a page or a whole domain",
                       description="Take content down at once: search stops returning it, the "
                       "shards drop its vectors, its stored bytes are removed, training "
                       "leaves it out, and the page or domain is never mined again (admin).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=int, metavar="ID", help="one image by its pool id")
    what.add_argument("--page", metavar="URL", help="a page and every image found on it")
    what.add_argument("--domain", metavar="HOST", help="every page of a host and its images")
    p.add_argument("--reason", default="", help="recorded with the takedown (<= 500 chars)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="tools.cli.cmd_delete:run")


def add_commands(sub: argparse._SubParsersAction) -> None:
    for add in (_search, _ingest, _index, _status, _training, _eval, _delete):
        add(sub)
