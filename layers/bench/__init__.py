"""``layer-bench``: fan-out, point-to-point and latency benchmarks of channel layers.

Modules, by responsibility: :mod:`~roomcast.layers.bench.cli` (options, the run), ``targets`` (what
``--layer``/``--backend`` name), ``scenarios`` (the coordinator: worker pools and the three
scenarios), ``workers`` (the member and sender processes), ``board`` (counters shared by those
processes), ``redis_stats`` (INFO deltas, ``redis-benchmark``) and ``report`` (medians, table,
JSON schema, plot). Importing this package imports none of them, so the worker processes can
decide how redis-py is loaded (``--no-hiredis``) before anything imports it.
"""

from __future__ import annotations
