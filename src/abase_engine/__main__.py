"""``python -m abase_engine``: the ``abase`` command line (see :mod:`abase_engine.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
