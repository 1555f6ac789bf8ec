"""Learning rules. Each factory returns a :class:`~bplambda_jax.rules.base.Rule`."""

from bplambda_jax.rules.base import Rule
from bplambda_jax.rules.bp_lambda import bp_lambda
from bplambda_jax.rules.bptt import bptt, exact_gradients
from bplambda_jax.rules.dni import dni
from bplambda_jax.rules.tbptt import tbptt

# The sensitivity-based rules (rtrl, eprop, snap, columnar_rtrl, eprop_m, online) live in the
# module ``bplambda_jax.rules.online``; rules by name: ``bplambda_jax.rules.registry.make_rule``.
