"""Test-only builders and references over the upstream TF code (not shipped in the wheel).

``build`` writes release-like upstream-graph checkpoints (training graph, EMA, optimizer slots,
frozen ``.pb``); ``reference`` runs upstream's own graphs and ``detect_face`` for the tests.
The demo and the benchmarks use them from a source checkout.
"""
