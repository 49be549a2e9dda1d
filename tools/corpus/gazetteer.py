"""Write the offline writer's country gazetteer (services/triplegen/data/countries.json).

    python -m tools.corpus.gazetteer [--cache data/cache]

The instruction writer needs what an LLM writer would know about places: country names and
the other ways pages write them, demonyms, capitals, land borders, regions. It is derived
from the pinned npm package world-countries (ODbL-1.0, mledoze/countries): a general
gazetteer, not the corpus generator's page text. The output is committed, so the triplegen
service never needs the npm cache.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from tools.corpus.fetch import Fetcher

OUT = Path(__file__).resolve().parents[2] / "services" / "triplegen" / "data" / "countries.json"
MAX_JSON_BYTES = 8 * 1024 * 1024
_LATIN = re.compile(r"^[A-Za-z][A-Za-z .,'()&-]*$")


def _aliases(row: dict, name: str) -> list[str]:
    """Other English spellings pages use: the official name, alt spellings that are words or
    capitalised abbreviations of 3+ letters (2-letter codes read as words: 'US', 'IN')."""
    out = [row["name"]["official"]]
    for alt in row.get("altSpellings", []):
        if _LATIN.match(alt) and (len(alt) >= 4 or (len(alt) == 3 and alt.isupper())):
            out.append(alt)
    return sorted({a for a in out if a != name})


def build_gazetteer(rows: list[dict]) -> list[dict]:
    names = {r["cca3"]: r["name"]["common"] for r in rows if r.get("cca3")}
    out = []
    for r in sorted(rows, key=lambda r: r["name"]["common"]):
        name = r["name"]["common"]
        dem = (r.get("demonyms") or {}).get("eng") or {}
        out.append({
            "name": name,
            "aliases": _aliases(r, name),
            "demonyms": sorted({d for d in (dem.get("m"), dem.get("f")) if d}),
            "capitals": list(r.get("capital") or []),
            "borders": sorted(names[b] for b in r.get("borders", []) if b in names),
            "region": r.get("region", ""),
            "subregion": r.get("subregion", ""),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.corpus.gazetteer")
    ap.add_argument("--cache", type=Path, default=Path("data/cache"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    raw = (Fetcher(args.cache / "sources").npm("world-countries") / "countries.json").read_bytes()
    if len(raw) > MAX_JSON_BYTES:
        raise SystemExit("countries.json is too large")
    data = {"source": "world-countries 5.1.0 (npm), ODbL-1.0, github.com/mledoze/countries",
            "countries": build_gazetteer(json.loads(raw))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {len(data['countries'])} countries to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
