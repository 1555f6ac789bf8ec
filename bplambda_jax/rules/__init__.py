"""Learning rules. Each factory returns a :class:`~bplambda_jax.rules.base.Rule`."""

from bplambda_jax.rules.base import Rule
from bplambda_jax.rules.bp_lambda import bp_lambda
from bplambda_jax.rules.bptt import bptt, exact_gradients
from bplambda_jax.rules.dni import dni
from bplambda_jax.rules.tbptt import tbptt
