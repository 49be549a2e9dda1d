"""`python -m tools.ingest.demo`: the demo's ingestion in one step (what `task ingest` runs).

Builds the corpus if it is missing, serves it on 127.0.0.1:8765 in the background (left
running, pid in data/infra/corpus-serve.pid) unless something already serves it there, and
submits every sitemap page (held-out pages marked held out) to the mining service.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from runtime import ports
from runtime.config import project_root, run_main
from tools.ingest.__main__ import main as ingest_main

SITE = ports.CORPUS_SITE_URL


def serving() -> bool:
    try:
        with urllib.request.urlopen(SITE + "sitemap.xml", timeout=2) as r:
            return b"<urlset" in r.read(4096)
    except OSError:
        return False


def ensure_corpus(size: str = "small", detach: bool = True) -> subprocess.Popen | None:
    """Build if missing and serve on :8765; returns the server we started (None if reused)."""
    root = project_root()
    if not (root / "data/corpus/site/sitemap.xml").exists():
        subprocess.run([sys.executable, "-m", "tools.corpus", "build", "--size", size],
                       cwd=root, check=True)
    if serving():
        return None
    log_dir = root / "data/infra"
    log_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.corpus", "serve", "--port", str(ports.CORPUS_SITE.http)],
        cwd=root,
        stdout=(log_dir / "corpus-serve.log").open("ab"), stderr=subprocess.STDOUT,
        start_new_session=detach)
    (log_dir / "corpus-serve.pid").write_text(str(proc.pid))
    for _ in range(50):
        if serving():
            return proc
        time.sleep(0.2)
    raise SystemExit(f"corpus server did not come up at {SITE} (port taken?)")


def main() -> int:
    size = sys.argv[1] if len(sys.argv) > 1 else "small"
    ensure_corpus(size)
    heldout = project_root() / "data/corpus/heldout_pages.txt"
    args = ["--sitemap", SITE + "sitemap.xml", "--allow-private", "--source", "corpus:demo"]
    if heldout.exists():
        args += ["--heldout-file", str(heldout)]
    print(f"ingest: corpus served at {SITE}; the miner needs "
          f"MAGICLENS_MINING_ALLOW_HOSTS={ports.local(ports.CORPUS_SITE.http)}", file=sys.stderr)
    return ingest_main(args)


if __name__ == "__main__":
    run_main("ingest", main)
