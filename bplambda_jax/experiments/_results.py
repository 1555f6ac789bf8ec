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
(``overwrite``); the directory is checked (and created) before anything is compiled. While a run
writes it, the directory is locked (``out/.lock``, an exclusive ``flock`` holding the writer's
pid): a second run into it is refused. The kernel drops the lock when its process ends, however
it ends, so the lock of a dead process never blocks a later run.
"""

from __future__ import annotations

import errno
import fcntl
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


LOCK_NAME = ".lock"


def _makedirs(path: str) -> None:
  os.makedirs(path, exist_ok=True)
  os.chmod(path, DIR_MODE)


class DirectoryLock:
  """An exclusive lock on a results directory: ``out/.lock``, ``flock``-ed, holding the pid.

  Raises:
    ResultsError: another process holds the lock (the message names the directory and its pid).
  """

  def __init__(self, directory: str):
    self.path = os.path.join(directory, LOCK_NAME)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise
        raise ResultsError(f"the results directory {directory} is being written by another run "
                           f"({self._holder()}); wait for it to end or choose another "
                           f"--out.") from None
      try:  # the file may have been removed by the holder between open and flock: retry
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    self._fd = fd

  def _holder(self) -> str:
    try:
      with open(self.path) as f:
        return f"pid {int(f.read().strip())}"
    except (OSError, ValueError):
      return "pid unknown"

  def release(self) -> None:
    """Remove the lock file and drop the lock (idempotent)."""
    if self._fd is None:
      return
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None


def _entries(out: str) -> list[str]:
  """The directory's entries other than the lock file."""
  return [name for name in os.listdir(out) if name != LOCK_NAME]


def prepare(out: str, *, resume: bool, overwrite: bool) -> tuple[str, DirectoryLock]:
  """Check, create and lock ``out`` before any compilation: (absolute path, lock).

  The caller releases the lock (:meth:`DirectoryLock.release`) when the run ends; the kernel
  drops it if the process dies first.

  Raises:
    ResultsError: ``out`` is empty, exists and is not empty without ``resume``/``overwrite``,
      ``resume`` without a previous run there, both flags, ``out`` is not writable, or another
      run is writing it.
  """
  if resume and overwrite:
    raise ResultsError("--resume and --overwrite exclude each other: resume continues the run in "
                       "the directory, overwrite deletes it.")
  if not str(out).strip():
    raise ResultsError("--out is empty; name the results directory.")
  out = os.path.abspath(out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise ResultsError(f"--out {out} exists and is not a directory.")
  try:
    _makedirs(out)
    probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
    probe.close()
  except OSError as e:
    raise ResultsError(f"--out {out}: cannot create or write the directory "
                       f"({e.strerror or e}).") from None
  lock = DirectoryLock(out)  # before looking inside: two runs cannot both find it empty
  try:
    exists = bool(_entries(out))
    if exists and not (resume or overwrite):
      raise ResultsError(f"the results directory {out} already holds a run; pass --resume to "
                         f"continue it or --overwrite to replace it.")
    is_run = os.path.isfile(os.path.join(out, "config.json"))
    if resume and not is_run:
      raise ResultsError(f"--resume: {out} holds no run to resume (no config.json).")
    if overwrite and exists:
      if not is_run:
        raise ResultsError(f"--overwrite replaces a results directory, but {out} holds other "
                           f"files (no config.json of a run); choose another --out.")
      for name in _entries(out):  # the directory and its lock stay
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
  except BaseException:
    lock.release()
    raise
  return out, lock


def remove_if_unused(out: str, lock: DirectoryLock) -> None:
  """Release ``lock`` and delete ``out`` if it holds nothing but files of a run that never
  trained (its config.json and an empty metrics.jsonl), so a corrected retry is not refused."""
  lock.release()
  names = set(_entries(out)) if os.path.isdir(out) else set()
  metrics = os.path.join(out, "metrics.jsonl")
  if names <= {"config.json", "metrics.jsonl"} and not (
      os.path.exists(metrics) and os.path.getsize(metrics)):
    shutil.rmtree(out, ignore_errors=True)


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
  """The JSON in ``path``; ResultsError naming the file if it is unreadable or damaged."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ResultsError(f"{path} is damaged (not valid JSON: {e}); restore it, or start again "
                       f"with --overwrite.") from None
  except UnicodeDecodeError as e:
    raise ResultsError(f"{path} is damaged (not text: {e}); restore it, or start again with "
                       f"--overwrite.") from None


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

  def truncate(self, rule: str, after_step: int, eval_every: int) -> None:
    """Drop what ``rule`` logged after its checkpoint ``after_step``: later lines, and an
    evaluation at ``after_step`` itself when it is off the ``eval_every`` grid (the final
    evaluation of a shorter budget, which a resumed, longer run does not make)."""
    off_grid = after_step % eval_every != 0
    kept = [line for line in self.lines()
            if not (line.get("rule") == rule and (
                line.get("step", 0) > after_step
                or (off_grid and line.get("kind") == "eval" and line.get("step") == after_step)))]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for line in kept:
        f.write(json.dumps(line, default=_default) + "\n")
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, self.path)

  def last_step(self, rule: str) -> int:
    """The last update ``rule`` logged a training line for (0: none)."""
    return max((line["step"] for line in self.lines()
                if line.get("rule") == rule and line.get("kind") == "train"), default=0)

  def append(self, rows: Iterable[dict]) -> None:
    with open(self.path, "a") as f:
      for row in rows:
        f.write(json.dumps(row, default=_default) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def lines(self) -> list[dict]:
    """Every logged row; ResultsError naming the file and line if one is damaged."""
    rows = []
    with open(self.path, "rb") as f:
      raw = f.read().splitlines()
    for number, line in enumerate(raw, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise ResultsError(f"{self.path}, line {number}, is damaged ({e}); restore it, or "
                             f"start again with --overwrite.") from None
    return rows


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
