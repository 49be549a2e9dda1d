"""Run ONCE (outside the project environments) to write
tests/fixtures/clip_tokenizer_reference.json:
token ids from open_clip's reference SimpleTokenizer (ftfy + regex), which our
trainer.models.clip_tokenizer must reproduce.

    pip download open_clip_torch==3.3.0 --no-deps -d /tmp/oc
    unzip -j /tmp/oc/open_clip_torch-*.whl open_clip/tokenizer.py \
        open_clip/bpe_simple_vocab_16e6.txt.gz -d /tmp/oc
    /tmp/ref/bin/pip install torch==2.13.0 ftfy regex numpy
    /tmp/ref/bin/python scripts/make_clip_tokenizer_reference.py /tmp/oc
"""

import importlib.util
import json
import sys
from pathlib import Path

TEXTS = [
    "a photo of a cat", "Hello, World! it's 2024 café 東京 🎉", "find this object in sketch domain",
    "  multiple   spaces\tand\nnewlines ", "&amp; html &lt;escaped&gt;", "don't we'll I'd they've",
    "x" * 300, "word " * 100, "", "Ünïcödé ÀÉÎ naïve", "1234567 3.14159 $%^&*",
]


def main() -> None:
    folder = Path(sys.argv[1])
    spec = importlib.util.spec_from_file_location("octok", folder / "tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tok = mod.SimpleTokenizer(str(folder / "bpe_simple_vocab_16e6.txt.gz"))
    ids = tok(TEXTS, context_length=77).tolist()
    out = Path(__file__).resolve().parents[1] / "tests/fixtures/clip_tokenizer_reference.json"
    out.write_text(json.dumps({"source": "open_clip_torch 3.3.0 SimpleTokenizer", "texts": TEXTS,
                               "ids": ids}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
