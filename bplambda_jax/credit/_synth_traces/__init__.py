"""The synthesiser's eligibility traces, one small form each: dense (any synthesiser), chunked (a
linear synthesiser on any cell) and structured (a diagonal or unit-blocked transition).

BP(λ)'s online mode chooses one form when it is built; the public names are re-exported by
:mod:`bplambda_jax.credit`.
"""
