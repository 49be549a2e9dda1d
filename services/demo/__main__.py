"""`./taskw demo`: the main job, end to end on the bundled corpus.

Runs every stage that is built, in pipeline order, and says plainly which are not yet.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

STAGES: list[tuple[str, str, list[str]]] = [
    ("start local PostgreSQL and Kafka", "services.runtime.infra",
     [sys.executable, "-m", "services.runtime.infra", "up"]),
    ("apply database migrations", "services.runtime.db", [sys.executable, "-m",
                                                          "services.runtime.db"]),
    ("build the demo corpus", "services.corpus",
     [sys.executable, "-m", "services.corpus", "build", "--out", "data/corpus"]),
]
NOT_BUILT = [
    "ingest the corpus through Kafka and mine it (mining service)",
    "generate triples (triplegen service)",
    "train the compact model and publish it (training service)",
    "embed and index the pool (Triton + ScaNN shards)",
    "run example queries and print the web UI address",
]


def main() -> int:
    for title, module, cmd in STAGES:
        if importlib.util.find_spec(module) is None:
            print(f"demo: {title}: not built yet")
            continue
        print(f"demo: {title} ...", flush=True)
        started = time.monotonic()
        if subprocess.run(cmd).returncode != 0:
            print(f"demo: {title} failed", file=sys.stderr)
            return 1
        print(f"demo: {title}: done in {time.monotonic() - started:.1f}s")
    for title in NOT_BUILT:
        print(f"demo: {title}: not built yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
