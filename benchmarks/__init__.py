"""Speed and memory benchmarks for bplambda_jax's learning rules.

``python -m benchmarks.run`` times one jitted training update (``train.make_update``) per case and
writes one JSON row per case; :mod:`benchmarks.cases` holds the case registry and
``benchmarks/README.md`` the latest table. See ``python -m benchmarks.run --help``.
"""
