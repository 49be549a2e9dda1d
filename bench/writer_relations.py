"""What the offline instruction writer makes of a built corpus, by relation, without running
the pipeline: the site's pages through the miner's HTML parser, same-page pairs as the miner
forms them (nearest on the page first, capped per page), each pair through MetadataWriter.

    python bench/writer_relations.py [--site data/corpus/site] [--per-pair 2] [--json OUT]

Prints triples per relation (and per page kind) so a writer change can be compared with the
one before it on the same corpus (run both, e.g. from two checkouts). Approximate: the miner
also drops near-duplicate pairs and triplegen's CLIP filter drops some pairs; neither needs
or changes the writer, so both sides of a comparison share the approximation.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from services.mining.htmlparse import parse_page
from services.triplegen.meta import ImageMeta
from services.triplegen.writers.base import PairContext
from services.triplegen.writers.metadata import MetadataWriter

ROOT = Path(__file__).resolve().parents[1]
MAX_PAGE_BYTES = 8 * 1024 * 1024


def page_pairs(n: int, cap: int) -> list[tuple[int, int]]:
    """Ordered (query, target) positions, nearest on the page first, as the miner orders them."""
    cands = sorted((abs(q - t), min(q, t), q, t) for q in range(n) for t in range(n) if q != t)
    return [(q, t) for *_, q, t in cands[:cap]]


def count(site: Path, per_pair: int, cap: int) -> dict[str, Counter]:
    writer = MetadataWriter(per_pair)
    by_rel: Counter = Counter()
    by_kind: Counter = Counter()
    pairs = errors = 0
    pair_id = 0
    for path in sorted((site / "pages").rglob("*.html")):
        raw = path.read_bytes()[:MAX_PAGE_BYTES]
        url = "http://corpus.local/" + path.relative_to(site).as_posix()
        page = parse_page(raw, url, 60)
        metas = [ImageMeta(i, alt=c.alt, caption=c.caption, context=c.context,
                           page_title=page.title, source_url=c.url)
                 for i, c in enumerate(page.candidates)]
        kind = path.relative_to(site / "pages").parts[0]
        for q, t in page_pairs(len(metas), cap):
            pair_id += 1
            pairs += 1
            res = writer.write_one(PairContext(pair_id, page.title, url, metas[q], metas[t],
                                               None))
            if res.error:
                errors += 1
            for ins in res.instructions:
                by_rel[ins.relation] += 1
                by_kind[f"{kind}:{ins.relation}"] += 1
    return {"relations": by_rel, "by_kind": by_kind,
            "totals": Counter(pairs=pairs, unwritten=errors, triples=sum(by_rel.values()))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", type=Path, default=ROOT / "data" / "corpus" / "site")
    ap.add_argument("--per-pair", type=int, default=2)
    ap.add_argument("--pairs-per-page", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not (args.site / "pages").is_dir():
        raise SystemExit(f"no pages under {args.site}; build the corpus: python -m tools.corpus "
                         "build")
    out = count(args.site, args.per_pair, args.pairs_per_page)
    print(" ".join(f"{k}={v}" for k, v in out["totals"].items()))
    for rel, n in out["relations"].most_common():
        print(f"{rel:32s} {n:6d}")
    if args.json:
        args.json.write_text(json.dumps({k: dict(v) for k, v in out.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
