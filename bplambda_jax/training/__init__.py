"""Training: optax groups, the jitted update, on-device runs and sweeps, streaming, sharding,
memory checks and checkpoints."""

from bplambda_jax.training._checkpoint import Checkpointer
from bplambda_jax.training._checkpoint import load_checkpoint
from bplambda_jax.training._checkpoint import save_checkpoint
from bplambda_jax.training._guards import GUARD_CODES
from bplambda_jax.training._guards import Divergence
from bplambda_jax.training._guards import GuardError
from bplambda_jax.training._guards import guard_message
from bplambda_jax.training._guards import raise_if_failed
from bplambda_jax.training._memory import available_memory_bytes
from bplambda_jax.training._memory import check_memory
from bplambda_jax.training._memory import state_bytes
from bplambda_jax.training._parallel import BATCH_AXIS
from bplambda_jax.training._parallel import SEED_AXIS
from bplambda_jax.training._parallel import SEED_AXIS_CHOICES
from bplambda_jax.training._parallel import constrain_batch
from bplambda_jax.training._parallel import initialize_distributed
from bplambda_jax.training._parallel import map_seeds
from bplambda_jax.training._parallel import resolve_seed_axis
from bplambda_jax.training._parallel import seed_mesh
from bplambda_jax.training._parallel import seed_sharding
from bplambda_jax.training._parallel import shard_seeds
from bplambda_jax.training._stream import Stream
from bplambda_jax.training._stream import StreamState
from bplambda_jax.training._stream import stream
from bplambda_jax.training._train import GROUPS
from bplambda_jax.training._train import TrainState
from bplambda_jax.training._train import adam
from bplambda_jax.training._train import init_state
from bplambda_jax.training._train import make_update
from bplambda_jax.training._train import optimiser
from bplambda_jax.training._train import run
from bplambda_jax.training._train import set_learning_rates
from bplambda_jax.training._train import sweep

__all__ = [
    "BATCH_AXIS",
    "Checkpointer",
    "Divergence",
    "GROUPS",
    "GUARD_CODES",
    "GuardError",
    "SEED_AXIS",
    "SEED_AXIS_CHOICES",
    "Stream",
    "StreamState",
    "TrainState",
    "adam",
    "available_memory_bytes",
    "check_memory",
    "constrain_batch",
    "guard_message",
    "init_state",
    "initialize_distributed",
    "load_checkpoint",
    "make_update",
    "map_seeds",
    "optimiser",
    "raise_if_failed",
    "resolve_seed_axis",
    "run",
    "save_checkpoint",
    "seed_mesh",
    "seed_sharding",
    "set_learning_rates",
    "shard_seeds",
    "state_bytes",
    "stream",
    "sweep",
]
