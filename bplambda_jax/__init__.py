"""bplambda_jax: online learning rules for recurrent networks in JAX."""

from bplambda_jax import cells
from bplambda_jax import kernels
from bplambda_jax import metrics
from bplambda_jax import parallel
from bplambda_jax import sensitivity
from bplambda_jax import synthesisers
from bplambda_jax.model import Batch, Model, make_model
from bplambda_jax.rules import Rule, bp_lambda, bptt

__version__ = "0.1.0"
