"""Training throughput: triples/s of frozen and full modes on 1 vs 4 simulated CPU devices,
and peak RSS. Each configuration runs in its own process (XLA_FLAGS must precede jax import).

    python bench/train.py [--model compact] [--steps 20] [--batch 16]

Default uses the real compact backbone on the toy split; keep it short (< 3 min).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import json, resource, sys
from trainer.configs import get_config
from trainer.data.toy import build_toy_split
from trainer.data.triples import JsonlTriples
from trainer.train import train
import jax
a = json.loads(sys.argv[1])
tr, _ = build_toy_split(a["tmp"] + "/toy", crops_per_photo=2, size=96)
cfg = get_config(a["model"], mode=a["mode"], steps=a["steps"], batch_size=a["batch"],
                 align_steps=0, checkpoint_every=10**9)
r = train(cfg, JsonlTriples(tr), a["tmp"] + "/wd_" + a["mode"] + str(len(jax.devices())))
print(json.dumps({"devices": len(jax.devices()), "mode": a["mode"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(mode: str, devices: int, args: argparse.Namespace, tmp: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), PYTHONPATH=str(REPO))
    payload = json.dumps({"mode": mode, "steps": args.steps, "batch": args.batch,
                          "model": args.model, "tmp": tmp})
    p = subprocess.run([sys.executable, "-c", _CHILD, payload], env=env, capture_output=True,
                       text=True, timeout=600)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    rate = _last_rate(p.stderr)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["triples_per_s"] = rate
    return res


def _last_rate(stderr: str) -> float:
    """The progress bar's final triples/s (tqdm postfix)."""
    found = re.findall(r"fusion/\w+.*?triples_per_s=([0-9.]+)", stderr)
    return float(found[-1]) if found else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="compact")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--modes", default="frozen,full")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            for dev in (1, 4):
                r = run(mode, dev, args, tmp)
                rows.append(r)
                print(f"{mode:7s} devices={dev}  {r['triples_per_s']:9.1f} triples/s  "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    by = {(r["mode"], r["devices"]): r["triples_per_s"] for r in rows}
    for mode in args.modes.split(","):
        print(f"{mode}: 4-device / 1-device = {by[(mode, 4)] / by[(mode, 1)]:.2f}x "
              "(simulated devices share the same CPU cores)")
    if ("frozen", 1) in by and ("full", 1) in by:
        print(f"frozen / full (1 device) = {by[('frozen', 1)] / by[('full', 1)]:.1f}x")


if __name__ == "__main__":
    main()
