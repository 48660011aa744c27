"""``python -m adex``: the ``adex`` command line (see :mod:`adex.cli`)."""

from adex.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
