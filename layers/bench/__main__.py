"""``python -m roomcast.layers.bench``: the same as the ``layer-bench`` command."""

from .cli import main

raise SystemExit(main())
