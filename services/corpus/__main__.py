"""``python -m services.corpus`` entry point."""

from services.corpus.cli import main

raise SystemExit(main())
