"""What is trained: cells, synthesisers, losses, the model and its data (``Batch``)."""

from bplambda_jax.model._cells import Cell
from bplambda_jax.model._cells import LSTMParts
from bplambda_jax.model._cells import columnar_lstm
from bplambda_jax.model._cells import gru
from bplambda_jax.model._cells import linear_rnn
from bplambda_jax.model._cells import lstm
from bplambda_jax.model._cells import rnn
from bplambda_jax.model._cells import tanh_rnn
from bplambda_jax.model._registry import CELLS
from bplambda_jax.model._elementwise import elementwise_lstm
from bplambda_jax.model._registry import get_cell
from bplambda_jax.model._elementwise import linear_lru
from bplambda_jax.model._elementwise import lru
from bplambda_jax.model._flax import from_flax
from bplambda_jax.model._losses import LOSSES
from bplambda_jax.model._losses import Loss
from bplambda_jax.model._losses import get_loss
from bplambda_jax.model._losses import objective
from bplambda_jax.model._losses import step_weights
from bplambda_jax.model._model import Batch
from bplambda_jax.model._model import Model
from bplambda_jax.model._model import make_model
from bplambda_jax.model._model import unroll
from bplambda_jax.model._model import validate_batch
from bplambda_jax.model._synthesisers import Synthesiser
from bplambda_jax.model._synthesisers import get_synthesiser
from bplambda_jax.model._synthesisers import linear_synthesiser
from bplambda_jax.model._synthesisers import mlp_synthesiser

__all__ = [
    "Batch",
    "CELLS",
    "Cell",
    "LOSSES",
    "LSTMParts",
    "Loss",
    "Model",
    "Synthesiser",
    "columnar_lstm",
    "elementwise_lstm",
    "from_flax",
    "get_cell",
    "get_loss",
    "get_synthesiser",
    "gru",
    "linear_lru",
    "linear_rnn",
    "linear_synthesiser",
    "lru",
    "lstm",
    "make_model",
    "mlp_synthesiser",
    "objective",
    "rnn",
    "step_weights",
    "tanh_rnn",
    "unroll",
    "validate_batch",
]
