"""`magiclens delete --image ID | --page URL | --domain HOST`: a takedown, through the client's
delete (the mining service's DeleteContent call, an admin token)."""

from __future__ import annotations

import argparse
import json
import sys

from magiclens_client import MagicLensClient, MagicLensError
from magiclens_client.client import MAX_REASON_CHARS
from tools.cli.errors import UsageError
from tools.cli.rpc import cli_error
from tools.cli.settings import ClientSettings


def run(args: argparse.Namespace, settings: ClientSettings) -> int:
    if len(args.reason) > MAX_REASON_CHARS:
        raise UsageError(f"--reason is longer than {MAX_REASON_CHARS} characters")
    if args.image is not None:
        if args.image <= 0:
            raise UsageError("--image must be a positive image id")
        target, what = {"image_id": args.image}, f"image {args.image}"
    elif args.page is not None:
        target, what = {"page_url": args.page}, f"page {args.page}"
    else:
        target, what = {"domain": args.domain}, f"domain {args.domain}"
    try:
        # the search root's address is not used by delete; the mining service's is
        with MagicLensClient(settings.search_addr, mining_addr=settings.mining_addr,
                             timeout=settings.rpc_timeout_s) as client:
            res = client.delete(**target, reason=args.reason)
    except MagicLensError as exc:
        raise cli_error(exc) from None
    if args.json:
        json.dump(res.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"took down {what}: {res.images_deleted} image(s) and {res.pages_deleted} "
              f"page(s) deleted now" + ("" if res.images_deleted or res.pages_deleted
                                        else " (already down, or nothing matched)"))
    return 0
