"""The `magiclens` command line (grows with the services)."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the installed `magiclens` command."""
    print("magiclens: no subcommands are built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
