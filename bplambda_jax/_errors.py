"""The error a user can fix: a bad argument, option, config key or flag."""


class ConfigError(ValueError):
  """A bad input the user can fix (an unknown rule or option, a config key out of range, an old
  flag): the message names it and what is accepted. The ``bplambda`` command prints it as one
  line (``error: …``, exit status 2); any other exception is a bug and keeps its traceback.

  A subclass of ``ValueError``, so ``except ValueError`` still catches it.
  """
