"""How long the `magiclens` command takes, as a user waits for it (issue 16: `--help` ≤ 0.3 s,
a local `search` ≤ 1 s), beside the interpreter's own start-up measured in the same run.

    ./taskw up            # a serving suite, for the search
    python bench/cli.py [--runs 7] [--image FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-300:]}")
    return statistics.median(times), statistics.pstdev(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--image", type=Path,
                    default=ROOT / "data/corpus/site/img/animal/drawing/cat.alt.webp")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("magiclens"))
    rows = [("python -c pass (floor)", [sys.executable, "-c", "pass"]),
            ("magiclens --help", [exe, "--help"]),
            ("magiclens search (local suite)",
             [exe, "search", "--image", str(args.image), "-q", "the same but blue", "-k", "5"])]
    print(f"| command | median s | sd s | runs {args.runs} |")
    print("|---|---|---|---|")
    for name, cmd in rows:
        med, sd = wall(cmd, args.runs)
        print(f"| {name} | {med:.2f} | {sd:.2f} | |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
