"""``python -m tokenkit``: the same as the ``tokenkit`` command."""

from tokenkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
