"""`magiclens search`: one query through the Python client (magiclens_client): an image and
an instruction, an image alone, or an instruction alone (text-to-image search)."""

from __future__ import annotations

import argparse
from typing import Any

from magiclens_client import MagicLensClient, MagicLensError
from runtime.limits import MAX_INSTRUCTION_CHARS, MAX_K
from tools.cli.errors import UsageError
from tools.cli.images import image_ref
from tools.cli.output import emit, table
from tools.cli.rpc import cli_error
from tools.cli.settings import ClientSettings


def _human(data: dict[str, Any]) -> str:
    head = f"model {data['model_version'] or '?'}, {len(data['hits'])} results"
    if data["partial"]:
        head += f" (PARTIAL: shards {data['missing_shards']} did not answer)"
    if not data["hits"]:
        return head
    rows = [[str(i + 1), f"{h['score']:.4f}", str(h["image_id"]),
             (h["page_title"] or h["alt_text"] or "")[:40], h["page_url"] or h["image_url"]]
            for i, h in enumerate(data["hits"])]
    return head + "\n" + table(rows, ["#", "score", "image", "title", "page"])


def run(args: argparse.Namespace, settings: ClientSettings) -> int:
    if not 1 <= args.k <= MAX_K:
        raise UsageError(f"-k must be between 1 and {MAX_K} (got {args.k})")
    if len(args.instruction) > MAX_INSTRUCTION_CHARS:
        raise UsageError(f"--instruction is longer than {MAX_INSTRUCTION_CHARS} characters")
    if args.image is None and not args.instruction.strip():
        raise UsageError("give --image, --instruction, or both (--instruction alone searches "
                         "by text)")
    image = image_ref(args.image) if args.image is not None else None
    try:
        with MagicLensClient(settings.search_addr, timeout=settings.rpc_timeout_s) as client:
            result = client.search(image, args.instruction, args.k, source=args.source,
                                   domain=args.domain,
                                   include_query_image=args.include_query_image)
    except MagicLensError as exc:
        raise cli_error(exc) from None
    emit(result.to_dict(), args.json, _human)
    return 0
