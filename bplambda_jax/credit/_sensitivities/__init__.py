"""The network's sensitivities: how each recurrent parameter influences the current state.

The first axis of credit assignment (the protocol, the Jacobians of a cell step, the family from
one-step credit to exact RTRL, their dense and compressed influence traces, and the registry by
name). The public names are re-exported by :mod:`bplambda_jax.credit`.
"""
