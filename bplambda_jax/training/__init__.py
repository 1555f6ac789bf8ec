"""Training: optax groups, the jitted update, on-device runs and sweeps, streaming, sharding,
memory checks and checkpoints."""

from bplambda_jax.training._checkpoint import Checkpointer
from bplambda_jax.training._checkpoint import load_checkpoint
from bplambda_jax.training._checkpoint import save_checkpoint
from bplambda_jax.training._guards import GUARD_CODES
from bplambda_jax.training._guards import Divergence
from bplambda_jax.training._guards import GuardError
from bplambda_jax.training._guards import raise_if_failed
from bplambda_jax.training._memory import check_memory
from bplambda_jax.training._parallel import SEED_AXIS_CHOICES
from bplambda_jax.training._parallel import constrain_batch
from bplambda_jax.training._parallel import initialize_distributed
from bplambda_jax.training._parallel import seed_mesh
from bplambda_jax.training._parallel import shard_seeds
from bplambda_jax.training._stream import Stream
from bplambda_jax.training._stream import StreamState
from bplambda_jax.training._stream import stream
from bplambda_jax.training._train import TrainState
from bplambda_jax.training._train import init_state
from bplambda_jax.training._train import make_update
from bplambda_jax.training._train import optimiser
from bplambda_jax.training._train import run
from bplambda_jax.training._train import sweep

__all__ = [
    "Checkpointer",
    "Divergence",
    "GUARD_CODES",
    "GuardError",
    "SEED_AXIS_CHOICES",
    "Stream",
    "StreamState",
    "TrainState",
    "check_memory",
    "constrain_batch",
    "init_state",
    "initialize_distributed",
    "load_checkpoint",
    "make_update",
    "optimiser",
    "raise_if_failed",
    "run",
    "save_checkpoint",
    "seed_mesh",
    "shard_seeds",
    "stream",
    "sweep",
]
