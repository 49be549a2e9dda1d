"""`magiclens delete --image ID | --page URL | --domain HOST`: a takedown, through the mining
service's DeleteContent call (an admin token)."""

from __future__ import annotations

import argparse
import json
import sys

from magiclens.v1 import mining_pb2, mining_pb2_grpc

from runtime import auth
from tools.cli.errors import UsageError
from tools.cli.rpc import call, channel
from tools.cli.settings import ClientSettings

MAX_REASON_CHARS = 500  # as the service enforces (services/mining/takedown.py)


def run(args: argparse.Namespace, settings: ClientSettings) -> int:
    if len(args.reason) > MAX_REASON_CHARS:
        raise UsageError(f"--reason is longer than {MAX_REASON_CHARS} characters")
    if args.image is not None:
        if args.image <= 0:
            raise UsageError("--image must be a positive image id")
        request = mining_pb2.DeleteContentRequest(image_id=args.image, reason=args.reason)
        what = f"image {args.image}"
    elif args.page is not None:
        request = mining_pb2.DeleteContentRequest(page_url=args.page, reason=args.reason)
        what = f"page {args.page}"
    else:
        request = mining_pb2.DeleteContentRequest(domain=args.domain, reason=args.reason)
        what = f"domain {args.domain}"
    ch = channel(settings.mining_addr, role=auth.ADMIN)
    try:
        res = call("mining", settings.mining_addr,
                   mining_pb2_grpc.MiningServiceStub(ch).DeleteContent, request,
                   settings.rpc_timeout_s)
    finally:
        ch.close()
    if args.json:
        json.dump({"images_deleted": res.images_deleted, "pages_deleted": res.pages_deleted,
                   "image_ids": list(res.image_ids)}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"took down {what}: {res.images_deleted} image(s) and {res.pages_deleted} "
              f"page(s) deleted now" + ("" if res.images_deleted or res.pages_deleted
                                        else " (already down, or nothing matched)"))
    return 0
