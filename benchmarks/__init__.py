"""Speed and memory benchmarks for bplambda_jax's learning rules (not part of the package).

Run from the repository root: ``python -m benchmarks.run`` times one jitted training update
(``bl.make_update``) per case and writes one JSON row per case. :mod:`benchmarks.cases` holds the
case registry, :mod:`benchmarks.harness` the measuring, :mod:`benchmarks.flops` the jaxpr FLOP
counter, :mod:`benchmarks.report` the tables and targets (``targets.json``) and
``benchmarks/README.md`` the latest results. See ``python -m benchmarks.run --help``.
"""
