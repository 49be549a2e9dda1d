"""`python -m trainer.eval` (and `magiclens eval`): evaluate a model version and the baselines.

    python -m trainer.eval --checkpoint DIR --corpus data/corpus [--out DIR] [--json]
    python -m trainer.eval --checkpoint DIR --triples FILE.jsonl
    python -m trainer.eval --config compact --corpus data/corpus   # untrained fusion head
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load(args: argparse.Namespace):
    import jax

    from trainer.checkpoints import load_params
    from trainer.models.magiclens import (
        abstract_params,
        build_model,
        config_for_checkpoint,
        pretrained_params,
    )

    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        meta = json.loads((ckpt / "magiclens_meta.json").read_text())
        model, pre = build_model(meta["config"], config=config_for_checkpoint(meta))
        params, _ = load_params(ckpt, abstract_params(model, pre.image_size))
        return model, params, pre, f"{meta['config']} @ {ckpt}"
    model, pre = build_model(args.config)
    return model, pretrained_params(model, jax.random.PRNGKey(0), pre.image_size), pre, \
        f"{args.config} (untrained fusion head)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="magiclens eval", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a model export directory (magiclens_meta.json)")
    src.add_argument("--config", choices=["compact", "base", "large"])
    data = ap.add_mutually_exclusive_group(required=True)
    data.add_argument("--corpus", help="a built demo corpus (held-out eval_queries.jsonl)")
    data.add_argument("--triples", help="a JSONL triples file (query_image, instruction, "
                                        "target_image)")
    ap.add_argument("--out", help="write report.md + metrics.png here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    for p in (args.checkpoint, args.corpus, args.triples):
        if p and not Path(p).exists():
            print(f"magiclens eval: {p} does not exist", file=sys.stderr)
            return 2
    model, params, pre, label = _load(args)
    if args.corpus:
        from trainer.eval.corpus import evaluate_corpus, quality_table, relation_table

        metrics = evaluate_corpus(model, params, pre, args.corpus)
        text = (f"Held-out corpus queries: {int(metrics['queries'])}, gallery "
                f"{int(metrics['gallery'])} images — {label}\n\n{quality_table(metrics)}\n"
                "(gallery cos: mean cosine between gallery embeddings; near 1 = collapsed)\n\n"
                f"{relation_table(metrics)}\n")
    else:
        from trainer.data.triples import JsonlTriples
        from trainer.eval.retrieval import evaluate_triples

        metrics = evaluate_triples(model, params, pre, JsonlTriples(args.triples))
        text = "\n".join(f"{k}: {v:.2f}" for k, v in sorted(metrics.items())) + "\n"
    if args.out:
        from trainer.eval.report import write_report

        headline = {k: v for k, v in metrics.items()
                    if k.count("/") == 1 and not k.endswith("/gallery_cos")}
        paths = write_report(headline, args.out, f"MagicLens evaluation — {label}")
        md = paths["markdown"]
        md.write_text(md.read_text() + "\n" + text)
    print(json.dumps(metrics, indent=2, sort_keys=True) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
