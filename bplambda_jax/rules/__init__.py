"""Learning rules: every factory returns a :class:`Rule` (sequence and step level)."""

from bplambda_jax.rules._base import Rule
from bplambda_jax.rules._bp_lambda import BPLambdaState
from bplambda_jax.rules._bp_lambda import EpropLag
from bplambda_jax.rules._bp_lambda import TDState
from bplambda_jax.rules._bp_lambda import bp_lambda
from bplambda_jax.rules._bptt import bptt
from bplambda_jax.rules._dni import DNIState
from bplambda_jax.rules._dni import dni
from bplambda_jax.rules._from_sensitivity import OnlineState
from bplambda_jax.rules._from_sensitivity import columnar_rtrl
from bplambda_jax.rules._from_sensitivity import eprop
from bplambda_jax.rules._from_sensitivity import eprop_m
from bplambda_jax.rules._from_sensitivity import from_sensitivity
from bplambda_jax.rules._from_sensitivity import rtrl
from bplambda_jax.rules._from_sensitivity import snap
from bplambda_jax.rules._registry import RULE_NAMES
from bplambda_jax.rules._registry import RuleSpec
from bplambda_jax.rules._registry import make_rule
from bplambda_jax.rules._registry import parse_rule_spec
from bplambda_jax.rules._registry import rule_options
from bplambda_jax.rules._tbptt import ChunkState
from bplambda_jax.rules._tbptt import tbptt

__all__ = [
    "BPLambdaState",
    "ChunkState",
    "DNIState",
    "EpropLag",
    "OnlineState",
    "RULE_NAMES",
    "Rule",
    "RuleSpec",
    "TDState",
    "bp_lambda",
    "bptt",
    "columnar_rtrl",
    "dni",
    "eprop",
    "eprop_m",
    "from_sensitivity",
    "make_rule",
    "parse_rule_spec",
    "rtrl",
    "rule_options",
    "snap",
    "tbptt",
]
