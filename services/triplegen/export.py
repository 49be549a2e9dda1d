"""Export active triples as the trainer's JSONL: query_image, instruction, target_image, split.

Images are written as local paths when the blob store is file:// (the trainer opens paths),
otherwise as blob URIs.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

from runtime import db
from services.triplegen import store


def image_ref(uri: str) -> str:
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme == "file" else uri


def export_jsonl(database_url: str, out: Path, writer: str | None = None,
                 split: str | None = None) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = out.with_suffix(out.suffix + ".tmp")
    with db.connect(database_url) as conn, tmp.open("w") as f:
        for r in store.export_rows(conn, writer, split):
            f.write(json.dumps({"query_image": image_ref(r["q"]), "instruction": r["instruction"],
                                "target_image": image_ref(r["t"]), "split": r["split"],
                                "relation": r["relation"], "writer": r["writer"],
                                "writer_version": r["writer_version"],
                                "triple_id": r["triple_id"]}, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(out)
    return n
