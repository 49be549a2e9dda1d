"""Export active triples as the trainer's JSONL: query_image, instruction, target_image, split.

Images are written as local paths when the blob store is file:// (the trainer opens paths),
otherwise as blob URIs.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

from runtime import db


def image_ref(uri: str) -> str:
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme == "file" else uri


def export_jsonl(database_url: str, out: Path, writer: str | None = None,
                 split: str | None = None) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    sql = ("SELECT t.triple_id, t.instruction, t.split, t.relation, t.writer, t.writer_version, "
           "qi.blob_uri AS q, ti.blob_uri AS t FROM triples t "
           "JOIN images qi ON qi.image_id = t.query_image_id "
           "JOIN images ti ON ti.image_id = t.target_image_id "
           "WHERE t.status = 'active' AND qi.blob_uri IS NOT NULL AND ti.blob_uri IS NOT NULL")
    args: list = []
    if writer:
        sql += " AND t.writer = %s"
        args.append(writer)
    if split:
        sql += " AND t.split = %s"
        args.append(split)
    n = 0
    tmp = out.with_suffix(out.suffix + ".tmp")
    with db.connect(database_url) as conn, tmp.open("w") as f:
        for r in conn.execute(sql + " ORDER BY t.triple_id", args):
            f.write(json.dumps({"query_image": image_ref(r["q"]), "instruction": r["instruction"],
                                "target_image": image_ref(r["t"]), "split": r["split"],
                                "relation": r["relation"], "writer": r["writer"],
                                "writer_version": r["writer_version"],
                                "triple_id": r["triple_id"]}, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(out)
    return n
