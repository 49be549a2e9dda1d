"""Write the static site as a WARC file (the Common Crawl format the miner ingests).

Record ids and dates are derived from the URL and a fixed crawl date, so the file is
byte-identical across builds.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

CRAWL_DATE = "2026-01-01T00:00:00Z"
HTTP_DATE = "Thu, 01 Jan 2026 00:00:00 GMT"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".xml": "application/xml", ".txt": "text/plain",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
}
NS = uuid.UUID("6f1c4b9e-3a1e-4b55-9d0e-6d2c8a1f0b7a")


def content_type(path: str) -> str:
    return CONTENT_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


def write_warc(site: Path, out: Path, base_url: str) -> int:
    """One response record per file under ``site`` (sorted); returns the record count."""
    files = sorted(p for p in site.rglob("*") if p.is_file())
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:
        w = WARCWriter(fh, gzip=True)
        info = b"software: magiclens tools.corpus\r\nformat: WARC File Format 1.0\r\n"
        w.write_record(w.create_warc_record(
            "", "warcinfo", payload=io.BytesIO(info), length=len(info),
            warc_content_type="application/warc-fields",
            warc_headers_dict={"WARC-Date": CRAWL_DATE, "WARC-Filename": out.name,
                               "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(NS, 'warcinfo')}>"}))
        for p in files:
            rel = p.relative_to(site).as_posix()
            url = base_url + rel
            body = p.read_bytes()
            headers = StatusAndHeaders("200 OK", [
                ("Content-Type", content_type(rel)), ("Content-Length", str(len(body))),
                ("Date", HTTP_DATE), ("Last-Modified", HTTP_DATE), ("Server", "corpus-static"),
            ], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(
                url, "response", payload=io.BytesIO(body), length=len(body),
                http_headers=headers,
                warc_headers_dict={"WARC-Date": CRAWL_DATE,
                                   "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(NS, url)}>"}))
    tmp.replace(out)
    return len(files)
