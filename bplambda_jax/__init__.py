"""bplambda_jax: online learning rules for recurrent networks in JAX.

The public surface is flat: every name below is importable as ``bplambda_jax.<name>``. The layers
live in subpackages (``model``, ``credit``, ``rules``, ``training``, ``tasks``, ``experiments``,
``kernels``, ``oracles``), each with its own ``__all__`` of the names a user calls or extends;
modules whose names start with an underscore are implementation details. The engine helpers
behind them (trace forms, Jacobians, kernel variants, registry introspection) are collected in
:mod:`bplambda_jax.internals`, which makes no stability promise.
"""

from bplambda_jax import credit
from bplambda_jax import experiments
from bplambda_jax import internals
from bplambda_jax import kernels
from bplambda_jax import model
from bplambda_jax import oracles
from bplambda_jax import rules
from bplambda_jax import tasks
from bplambda_jax import training
from bplambda_jax._errors import ConfigError
from bplambda_jax.credit import Sensitivity
from bplambda_jax.credit import check_structure
from bplambda_jax.credit import get_sensitivity
from bplambda_jax.experiments import alignment
from bplambda_jax.experiments import cosine
from bplambda_jax.model import Batch
from bplambda_jax.model import Cell
from bplambda_jax.model import LSTMParts
from bplambda_jax.model import Loss
from bplambda_jax.model import Model
from bplambda_jax.model import Synthesiser
from bplambda_jax.model import columnar_lstm
from bplambda_jax.model import elementwise_lstm
from bplambda_jax.model import from_flax
from bplambda_jax.model import get_cell
from bplambda_jax.model import get_loss
from bplambda_jax.model import get_synthesiser
from bplambda_jax.model import gru
from bplambda_jax.model import linear_lru
from bplambda_jax.model import linear_rnn
from bplambda_jax.model import linear_synthesiser
from bplambda_jax.model import lru
from bplambda_jax.model import lstm
from bplambda_jax.model import make_model
from bplambda_jax.model import mlp_synthesiser
from bplambda_jax.model import objective
from bplambda_jax.model import rnn
from bplambda_jax.model import step_weights
from bplambda_jax.model import tanh_rnn
from bplambda_jax.model import unroll
from bplambda_jax.oracles import exact_gradients
from bplambda_jax.rules import RULE_NAMES
from bplambda_jax.rules import BPLambdaState
from bplambda_jax.rules import ChunkState
from bplambda_jax.rules import DNIState
from bplambda_jax.rules import OnlineState
from bplambda_jax.rules import Rule
from bplambda_jax.rules import bp_lambda
from bplambda_jax.rules import bptt
from bplambda_jax.rules import columnar_rtrl
from bplambda_jax.rules import dni
from bplambda_jax.rules import eprop
from bplambda_jax.rules import eprop_m
from bplambda_jax.rules import from_sensitivity
from bplambda_jax.rules import make_rule
from bplambda_jax.rules import rtrl
from bplambda_jax.rules import snap
from bplambda_jax.rules import tbptt
from bplambda_jax.training import Stream
from bplambda_jax.training import StreamState
from bplambda_jax.training import TrainState
from bplambda_jax.training import init_state
from bplambda_jax.training import make_update
from bplambda_jax.training import optimiser
from bplambda_jax.training import raise_if_failed
from bplambda_jax.training import run
from bplambda_jax.training import stream
from bplambda_jax.training import sweep

__version__ = "0.2.0"

__all__ = [
    "BPLambdaState",
    "Batch",
    "Cell",
    "ChunkState",
    "ConfigError",
    "DNIState",
    "LSTMParts",
    "Loss",
    "Model",
    "OnlineState",
    "RULE_NAMES",
    "Rule",
    "Sensitivity",
    "Stream",
    "StreamState",
    "Synthesiser",
    "TrainState",
    "alignment",
    "bp_lambda",
    "bptt",
    "check_structure",
    "columnar_lstm",
    "columnar_rtrl",
    "cosine",
    "credit",
    "dni",
    "elementwise_lstm",
    "eprop",
    "eprop_m",
    "exact_gradients",
    "experiments",
    "from_flax",
    "from_sensitivity",
    "get_cell",
    "get_loss",
    "get_sensitivity",
    "get_synthesiser",
    "gru",
    "init_state",
    "internals",
    "kernels",
    "linear_lru",
    "linear_rnn",
    "linear_synthesiser",
    "lru",
    "lstm",
    "make_model",
    "make_rule",
    "make_update",
    "mlp_synthesiser",
    "model",
    "objective",
    "optimiser",
    "oracles",
    "raise_if_failed",
    "rnn",
    "rtrl",
    "rules",
    "run",
    "snap",
    "step_weights",
    "stream",
    "sweep",
    "tanh_rnn",
    "tasks",
    "tbptt",
    "training",
    "unroll",
]
