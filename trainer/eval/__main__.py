"""`python -m trainer.eval` (and `magiclens eval`): evaluate a model version and the baselines.

    python -m trainer.eval --checkpoint DIR --corpus data/corpus [--out DIR] [--json]
    python -m trainer.eval --checkpoint DIR --triples FILE.jsonl
    python -m trainer.eval --config compact --corpus data/corpus   # untrained fusion head
    python -m trainer.eval --checkpoint DIR --benchmark circo|cirr|fashioniq --data DIR \
        [--split val|test] [--out DIR] [--batch-size N] [--cache DIR] [--json]

`--benchmark` runs a public benchmark laid out as its official release
(trainer.eval.benchmarks): it prints the paper's metrics (val splits) and writes the
CIRCO/CIRR test-server submission files and metrics.json under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainer.eval.benchmarks import BENCHMARKS, FIQ_CATEGORIES


def _load(args: argparse.Namespace):
    import jax

    from trainer.checkpoints import META_FILE, load_params
    from trainer.models.magiclens import (
        abstract_params,
        build_model,
        config_for_checkpoint,
        pretrained_params,
    )

    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        meta = json.loads((ckpt / META_FILE).read_text())
        model, pre = build_model(meta["config"], config=config_for_checkpoint(meta))
        params, _ = load_params(ckpt, abstract_params(model, pre.image_size))
        return model, params, pre, f"{meta['config']} @ {ckpt}"
    model, pre = build_model(args.config)
    return model, pretrained_params(model, jax.random.PRNGKey(0), pre.image_size), pre, \
        f"{args.config} (untrained fusion head)"


def _benchmark(args: argparse.Namespace) -> int:
    """`--benchmark`: check the layout first (one line on a missing file), then run."""
    from trainer.eval.benchmarks import load_splits, run_benchmark

    categories = args.category or list(FIQ_CATEGORIES)
    try:
        load_splits(args.benchmark, args.data, args.split, categories)
    except ValueError as e:  # LayoutError included
        print(f"magiclens eval: {e}", file=sys.stderr)
        return 2
    model, params, pre, label = _load(args)
    split = "test1" if args.benchmark == "cirr" and args.split == "test" else args.split
    out = args.out or f"eval-{args.benchmark}-{split}"
    try:
        result, text = run_benchmark(
            args.benchmark, args.data, model, params, pre, out, args.split, categories,
            batch=args.batch_size, progress=not args.no_progress, label=label,
            cache_dir=args.cache,
            log=lambda m: print(m, file=sys.stderr))
    except ValueError as e:  # an unreadable image found while embedding
        print(f"magiclens eval: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="magiclens eval", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a model export directory (magiclens_meta.json)")
    src.add_argument("--config", choices=["compact", "base", "large"])
    data = ap.add_mutually_exclusive_group(required=True)
    data.add_argument("--corpus", help="a built demo corpus (held-out eval_queries.jsonl)")
    data.add_argument("--triples", help="a JSONL triples file (query_image, instruction, "
                                        "target_image)")
    data.add_argument("--benchmark", choices=BENCHMARKS,
                      help="a public benchmark in its official layout (needs --data)")
    ap.add_argument("--data", help="the benchmark's directory (as its release lays it out)")
    ap.add_argument("--split", default="val",
                    help="benchmark split: val (metrics) or test (CIRCO test / CIRR test1: "
                         "submission files only); default val")
    ap.add_argument("--category", action="append", choices=FIQ_CATEGORIES,
                    help="FashionIQ category (repeatable; default all three)")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="images per model call for benchmarks (default 64)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--cache", metavar="DIR",
                    help="keep benchmark gallery embeddings here between runs (.npz, keyed "
                         "by the checkpoint's bytes and the image files)")
    ap.add_argument("--out", help="write report.md + metrics.png here; for --benchmark the "
                                  "submission files and metrics.json (default "
                                  "./eval-BENCHMARK-SPLIT)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if bool(args.benchmark) != bool(args.data):
        ap.error("--benchmark and --data go together")
    if not 1 <= args.batch_size <= 1024:
        ap.error("--batch-size must be 1..1024")
    for p in (args.checkpoint, args.corpus, args.triples):
        if p and not Path(p).exists():
            print(f"magiclens eval: {p} does not exist", file=sys.stderr)
            return 2
    if args.checkpoint and not (Path(args.checkpoint) / "magiclens_meta.json").is_file():
        print(f"magiclens eval: {Path(args.checkpoint) / 'magiclens_meta.json'} is missing "
              "(--checkpoint takes a model export directory)", file=sys.stderr)
        return 2
    if args.benchmark:
        return _benchmark(args)
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
