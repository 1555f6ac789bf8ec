"""The results directory of a run: never overwritten by accident, written atomically, readable.

::

    out/
      config.json        the resolved config
      metrics.jsonl      one JSON line per (rule, seed, logged chunk or evaluation)
      summary.json       per rule: per-seed results, mean ± sd (ddof = 1), n; data; provenance
      *.png              the curves, one line per rule, a band over seeds
      checkpoints/<rule>/<step>/   orbax checkpoints

Files are created readable by the group and others (mode 0644, directories 0755). An existing,
non-empty directory is refused unless the run resumes it (``resume``) or replaces it
(``overwrite``); the directory is checked (and created) before anything is compiled.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from typing import Iterable, Optional

import jax
import numpy as np

FILE_MODE = 0o644
DIR_MODE = 0o755


class ResultsError(RuntimeError):
  """The results directory cannot be used as asked."""


def _makedirs(path: str) -> None:
  os.makedirs(path, exist_ok=True)
  os.chmod(path, DIR_MODE)


def prepare(out: str, *, resume: bool, overwrite: bool) -> str:
  """Check and create ``out`` before any compilation; returns its absolute path.

  Raises:
    ResultsError: ``out`` exists and is not empty without ``resume``/``overwrite``; ``resume``
      without a previous run there; both flags; or ``out`` is not writable.
  """
  if resume and overwrite:
    raise ResultsError("--resume and --overwrite exclude each other: resume continues the run in "
                       "the directory, overwrite deletes it.")
  out = os.path.abspath(out)
  exists = os.path.isdir(out) and bool(os.listdir(out))
  if os.path.exists(out) and not os.path.isdir(out):
    raise ResultsError(f"--out {out} exists and is not a directory.")
  if exists and not (resume or overwrite):
    raise ResultsError(f"the results directory {out} already holds a run; pass --resume to "
                       f"continue it or --overwrite to replace it.")
  is_run = os.path.isfile(os.path.join(out, "config.json"))
  if resume and not is_run:
    raise ResultsError(f"--resume: {out} holds no run to resume (no config.json).")
  if overwrite and exists:
    if not is_run:
      raise ResultsError(f"--overwrite replaces a results directory, but {out} holds other files "
                         f"(no config.json of a run); choose another --out.")
    shutil.rmtree(out)
  try:
    _makedirs(out)
    probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
    probe.close()
  except OSError as e:
    raise ResultsError(f"--out {out}: cannot create or write the directory "
                       f"({e.strerror or e}).") from None
  return out


def write_json(path: str, obj) -> None:
  """Atomic JSON write (temporary file + rename), mode 0644."""
  directory = os.path.dirname(os.path.abspath(path))
  _makedirs(directory)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=1, default=_default)
    f.write("\n")
  os.chmod(tmp, FILE_MODE)
  os.replace(tmp, path)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _default(v):
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (np.floating,)):
    return float(v)
  if isinstance(v, np.ndarray):
    return v.tolist()
  raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


class MetricsLog:
  """``metrics.jsonl``: appended line by line; on resume, lines past the checkpoint are dropped."""

  def __init__(self, path: str):
    self.path = path
    if not os.path.exists(path):
      with open(path, "w"):
        pass
      os.chmod(path, FILE_MODE)

  def truncate(self, rule: str, after_step: int) -> None:
    """Drop the lines of ``rule`` logged after ``after_step`` (a resumed run logs them again)."""
    kept = [line for line in self.lines()
            if not (line.get("rule") == rule and line.get("step", 0) > after_step)]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for line in kept:
        f.write(json.dumps(line, default=_default) + "\n")
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, self.path)

  def append(self, rows: Iterable[dict]) -> None:
    with open(self.path, "a") as f:
      for row in rows:
        f.write(json.dumps(row, default=_default) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def lines(self) -> list[dict]:
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]


def provenance() -> dict:
  """Where and with what the run was made: git sha, versions, devices, host, date."""
  sha = None
  try:
    here = os.path.dirname(os.path.abspath(__file__))
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                         timeout=5).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    pass
  import flax
  import optax

  from bplambda_jax import __version__
  return {"bplambda_jax": __version__, "git_sha": sha, "jax": jax.__version__,
          "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
          "flax": flax.__version__, "optax": optax.__version__, "python": platform.python_version(),
          "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
          "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def mean_sd(values) -> dict:
  """{'mean', 'sd' (ddof = 1; None for one value), 'n', 'values'}; a NaN stays a NaN."""
  v = np.asarray(values, dtype=np.float64)
  return {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if v.size > 1 else None,
          "n": int(v.size), "values": v.tolist()}


def format_mean_sd(stat: dict, digits: int = 4) -> str:
  if stat["sd"] is None:
    return f"{stat['mean']:.{digits}f} (n = 1)"
  return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f} (n = {stat['n']})"
