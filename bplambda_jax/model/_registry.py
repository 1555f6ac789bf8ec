"""The registry of library cells: a cell by its name, with its default options.

Adding a library cell is its factory (a function ``hidden_size -> Cell``) and one line in
``CELLS``; ``bplambda run --set cell=NAME`` and every rule then take it.
"""

from bplambda_jax.model._cells import Cell, columnar_lstm, gru, linear_rnn, lstm, tanh_rnn
from bplambda_jax.model._elementwise import elementwise_lstm, linear_lru, lru

CELLS = {
    "linear": linear_rnn,
    "tanh": tanh_rnn,
    "lstm": lstm,
    "gru": gru,
    "columnar_lstm": columnar_lstm,
    "elementwise_lstm": elementwise_lstm,
    "lru": lru,
    "linear_lru": linear_lru,
}


def get_cell(name: str, hidden_size: int) -> Cell:
  """A library cell by name, with its default options: one of ``CELLS``.

  'linear', 'tanh', 'lstm', 'gru', 'columnar_lstm' (no connections), 'elementwise_lstm', 'lru'
  (φ = gelu) and 'linear_lru'.
  """
  if name not in CELLS:
    raise ValueError(f"cell must be one of {sorted(CELLS)}, got {name!r}.")
  return CELLS[name](hidden_size)
