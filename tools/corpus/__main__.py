"""``python -m tools.corpus`` entry point."""

from tools.corpus.cli import main

raise SystemExit(main())
