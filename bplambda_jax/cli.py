"""The ``bplambda`` command.

``bplambda run TASK``  trains rules on a task (toy, plastic-toy, line-draw, copy-repeat with its
                       curriculum, seqmnist-row/-pixel/-permuted), each with its own seeds, into a
                       results directory: config.json, metrics.jsonl, summary.json, plots, orbax
                       checkpoints; resumable, guarded against non-finite values.
``bplambda toy``       BP(λ) synthesisers on the toy task for several λ: the paper's alignment
                       figure (a ``run`` of the toy task with a grid over λ).
``bplambda align``     a table of rules and their alignment with BPTT on a task.
``bplambda stream``    rules learning online on one unbounded stream (trace conditioning), weights
                       updated every k steps, against the best memoryless predictor.

Exit status: 0 done, 1 a guard stopped the run, 2 a usage error (one line ``error: …``), 3 an
internal error (a traceback: please report it), 130 SIGINT or SIGTERM (a second one aborts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from bplambda_jax._errors import ConfigError
from bplambda_jax.experiments import _alignment
from bplambda_jax.experiments._stream_run import STREAM_TASKS
from bplambda_jax.experiments._tasks import RUN_TASKS
from bplambda_jax.rules import RULE_NAMES

EXIT_STOPPED = 1
EXIT_ERROR = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _floats(text: str, name: str) -> list[float]:
  try:
    return [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ConfigError(f"--{name} must be a comma-separated list of numbers, got {text!r}") from None


def _specs(texts, flag: str = "--rule") -> tuple:
  """Rule specs from one or more comma-separated lists (commas inside parentheses separate
  options, not rules)."""
  from bplambda_jax._spec import split_top

  texts = [texts] if isinstance(texts, str) else texts
  return tuple(spec for text in texts for spec in split_top(text, flag))


def build_config(args):
  """The RunConfig of ``bplambda run``: defaults < --config FILE < flags < --set key=value."""
  from bplambda_jax.experiments import RunConfig
  from bplambda_jax.experiments._config import parse_grid, parse_set

  values = {}
  if args.config:
    try:
      with open(args.config) as f:
        values = json.load(f)
    except OSError as e:
      raise ConfigError(f"--config {args.config}: {e.strerror}.") from None
    except json.JSONDecodeError as e:
      raise ConfigError(f"--config {args.config} is not valid JSON: {e}.") from None
    if not isinstance(values, dict):
      raise ConfigError(f"--config {args.config} must hold a JSON object of config keys.")
    values.pop("runs", None)  # a saved config.json also lists its runs
    if values.get("task", args.task) != args.task:
      raise ConfigError(f"--config {args.config} is for task {values['task']!r} but the command "
                        f"runs task {args.task!r}; pass that task or remove the key.")
  values["task"] = args.task
  for key, flag in (("rules", "rule"), ("seeds", "seeds"), ("steps", "steps"),
                    ("epochs", "epochs"), ("data_dir", "data_dir"), ("data_path", "data_path")):
    v = getattr(args, flag)
    if v is not None:
      values[key] = _specs(v) if key == "rules" else v
  if args.faithful:
    values["faithful"] = True
  if args.grid:  # per key, the command's values replace the config file's
    values["grid"] = {**(values.get("grid") or {}), **parse_grid(*args.grid)}
  return parse_set(RunConfig.from_dict(values), *(args.set or ()))


def _use_dtype(dtype: str) -> None:
  """64-bit JAX for a float64 run, switched on before anything is computed."""
  if dtype == "float64":
    import jax
    jax.config.update("jax_enable_x64", True)


def _print_json(obj) -> None:
  print(json.dumps(obj, indent=1))


def _print_summary(summary: dict) -> None:
  from bplambda_jax.experiments import format_mean_sd

  for label, s in summary["rules"].items():
    parts = []
    for group in ("test", "eval", "final"):
      for k, stat in (s.get(group) or {}).items():
        if k in ("loss", "accuracy", "alignment", "count", "solved_n", "solved_r") and (
            k != "count"):
          parts.append(f"{group} {k} {format_mean_sd(stat)}")
    if "solved" in s:
      solved = [f"({n},{r})" for n, r in zip(s["solved"]["n"], s["solved"]["r"])]
      parts.append("largest (N, R) solved per seed: " + " ".join(solved))
    print(f"{label}: " + "; ".join(parts[:4]))
  for spec, best in (summary.get("grid") or {}).get("best", {}).items():
    if best is None:
      print(f"{spec}: no grid point finished with a finite score")
      continue
    test = "; ".join(f"test {k} {format_mean_sd(v)}" for k, v in (best["test"] or {}).items()
                     if k in ("loss", "accuracy"))
    print(f"best point of {spec} by {best['score']}: {best['label']} ({best['mean']:.4g})"
          + (f"; {test}" if test else ""))


def _checked_config(cfg):
  """The resolved config, once its rules are built at every point of its grid (every option and
  grid key checked; nothing compiled)."""
  from bplambda_jax.experiments._experiment import prepare, runs_of
  from bplambda_jax.experiments._setup import load_data

  data, source = load_data(cfg, verbose=False)
  cfg = cfg.resolve(None if data is None else data.train.num_examples)
  prepare(cfg, runs_of(cfg), data, source)
  return cfg


def cmd_run(args) -> int:
  from bplambda_jax.experiments import run_experiment

  cfg = build_config(args)
  if args.print_config:
    print(_checked_config(cfg).to_json())
    return 0
  _use_dtype(cfg.dtype)
  out = os.path.join("results", cfg.task) if args.out is None else args.out
  summary = run_experiment(cfg, out, resume=args.resume, overwrite=args.overwrite,
                progress=not args.no_progress)
  _print_summary(summary)
  return 0


def cmd_toy(args) -> int:
  """``bplambda run toy`` (or plastic-toy) with BP(λ) and a grid over λ (``--lambdas``)."""
  from bplambda_jax.experiments import RunConfig, format_mean_sd, run_experiment
  from bplambda_jax.experiments._config import parse_set

  lambdas = _floats(args.lambdas, "lambdas")
  cfg = RunConfig(task="plastic-toy" if args.plastic else "toy", rules=("bp_lambda",),
                  seeds=args.seeds, seed=args.seed, steps=args.steps, gamma=args.gamma,
                  seq_len=args.seq_len, hidden_size=args.hidden_size,
                  batch_size=args.batch_size, lr_synth=args.lr_synth, mode=args.mode,
                  faithful=args.faithful, grid={"lambda_": lambdas})
  cfg = parse_set(cfg, *(args.set or ()))
  if args.print_config:
    print(_checked_config(cfg).to_json())
    return 0
  _use_dtype(cfg.dtype)
  summary = run_experiment(cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                progress=not args.no_progress)
  print(f"\n{'λ':>6}  final alignment with BPTT (mean ± sd over seeds)")
  for point in summary["grid"]["points"]:
    stat = summary["rules"][point["label"]]["eval"]["alignment"]
    print(f"{point['point']['lambda_']:>6g}  {format_mean_sd(stat)}")
  return 0


DEFAULT_ALIGN_RULES = ("bptt,tbptt:1,tbptt:3,dni:1,dni:3,bp_lambda,rtrl,eprop,snap:1,snap:2,"
                       "columnar_rtrl,eprop_m:1,eprop_m:2,eprop_m:3")


def cmd_align(args) -> int:
  from bplambda_jax import experiments
  from bplambda_jax.experiments._alignment import task_sizes
  from bplambda_jax.experiments._config import MAX_SEED
  from bplambda_jax.rules import parse_rule_spec

  specs = _specs(args.rule or DEFAULT_ALIGN_RULES)
  for spec in specs:
    parse_rule_spec(spec)
  if args.task not in _alignment.TASKS:
    raise ConfigError(f"--task must be one of {_alignment.TASKS}, got {args.task!r}.")
  if args.seeds < 1:
    raise ConfigError(f"--seeds must be at least 1, got {args.seeds}.")
  if not 0 <= args.seed <= MAX_SEED - (args.seeds - 1):
    raise ConfigError(f"--seed must be an integer in [0, {MAX_SEED} − (seeds − 1)], "
                      f"got {args.seed}.")
  cell, hidden, _ = task_sizes(args.task, args.cell, args.hidden_size)
  config = {"task": args.task, "rules": list(specs), "cell": cell, "hidden": hidden,
            "seeds": args.seeds, "seed": args.seed, "synth_steps": args.synth_steps,
            "lr_synth": args.lr_synth, "lambda_": args.lambda_, "gamma": args.gamma}
  if args.print_config:
    _print_json(config)
    return 0
  seeds = list(range(args.seed, args.seed + args.seeds))
  print(f"alignment with BPTT on task {args.task!r} ({cell}, H = {hidden}): {len(specs)} rules, "
        f"{len(seeds)} seeds; synthesisers trained for {args.synth_steps} updates first",
        flush=True)
  rows = experiments.run_alignment(args.task, specs, seeds, cell=cell, hidden=hidden,
                                   synth_steps=args.synth_steps, lr_synth=args.lr_synth,
                                   lambda_=args.lambda_, gamma=args.gamma, out=args.out,
                                   overwrite=args.overwrite, progress=not args.no_progress)
  print(_alignment.format_rows(rows))
  if args.out:
    from bplambda_jax.experiments._results import provenance, write_json
    write_json(os.path.join(args.out, "alignment.json"),
               {"config": config, "provenance": provenance(), "rows": rows})
    print(f"wrote {os.path.join(args.out, 'alignment.json')}")
  return 0


def _ints(text: str, name: str) -> tuple:
  """'8' or '8,24' as (min, max) integers."""
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    values = []
  if len(values) not in (1, 2):
    raise ConfigError(f"{name} takes N or MIN,MAX (integers), got {text!r}.")
  return values[0], values[-1]


def cmd_stream(args) -> int:
  from bplambda_jax import tasks
  from bplambda_jax.experiments import RunError, format_mean_sd, mean_sd, run_stream
  from bplambda_jax.experiments._stream_run import stream_settings
  from bplambda_jax.training import GuardError

  isi, iti = _ints(args.isi, "--isi"), _ints(args.iti, "--iti")
  trace = tasks.TraceConfig(*isi, *iti, args.distractors, args.distractor_rate)
  kwargs = dict(trace=trace, cell=args.cell, hidden_size=args.hidden_size,
                batch_size=args.batch_size, steps=args.steps, chunk=args.chunk, every=args.every,
                lr=args.lr, lr_synth=args.lr_synth, seeds=args.seeds, seed=args.seed,
                tail=args.tail, dtype=args.dtype)
  specs = _specs(args.rule or ("bp_lambda,eprop,tbptt:2",))
  _use_dtype(args.dtype)
  settings = stream_settings(specs, **kwargs)
  if args.print_config:
    _print_json(settings)
    return 0
  if args.out is not None and os.path.exists(os.path.join(args.out, "stream.json")) \
      and not args.overwrite:
    raise ConfigError(f"{os.path.join(args.out, 'stream.json')} exists; pass --overwrite to "
                      f"replace it.")
  try:
    result = run_stream(specs, verbose=not args.no_progress, **kwargs)
  except GuardError as e:  # a non-finite or diverging step: the run stops, exit status 1
    raise RunError(str(e)) from None
  print(f"\nMSE over the last {args.tail:g} of the stream (mean ± sd over seeds); the best "
        f"memoryless predictor: {result['memoryless_mse']:.4f} in the long run")
  for spec, res in result["results"].items():
    print(f"{spec:>24}  {format_mean_sd(mean_sd(res['tail_mse']))}   memoryless on the same "
          f"steps {format_mean_sd(mean_sd(res['memoryless_tail_mse']))}")
  if args.out is not None:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "stream.json"), "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
    print(f"wrote {os.path.join(args.out, 'stream.json')}")
  return 0


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
  """Shows each default once: not for flags, nor where the help text already names it (a preset's
  default is resolved from the task, so a None there means 'the preset's value')."""

  def _get_help_string(self, action):
    text = action.help or ""
    if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
        or "default" in text:
      return text
    return super()._get_help_string(action)


def _common(p, out_default):
  p.add_argument("--out", default=out_default, help="results directory")
  p.add_argument("--resume", action="store_true",
                 help="continue the run in --out from its last checkpoint")
  p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")


# flags renamed to the config keys they set: the old spelling is refused, naming the new one
_RENAMED = {"run": {"--rules": "--rule"},
            "toy": {"--T": "--seq-len", "--hidden": "--hidden-size", "--batch": "--batch-size"},
            "align": {"--rules": "--rule", "--hidden": "--hidden-size"}}


class _Renamed(argparse.Action):
  """A flag's old spelling: a ConfigError naming the new one."""

  def __init__(self, option_strings, dest, new, **kwargs):
    super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
    self.new = new

  def __call__(self, parser, namespace, values, option_string=None):
    raise ConfigError(f"{parser.prog}: {option_string} is now {self.new} (flags are named after "
                      f"the config keys they set).")


def _add_renamed(p, command):
  for old, new in _RENAMED[command].items():
    p.add_argument(old, action=_Renamed, new=new, dest=argparse.SUPPRESS)


def _add_stream_parser(sub) -> None:
  """The ``stream`` command's parser."""
  st = sub.add_parser("stream", formatter_class=_Formatter,
                      help="rules learning online on one unbounded stream",
                      description="Rules learning on one unbounded trace-conditioning stream "
                      "(a cue, a delay, a signal to predict one step ahead), weights updated every "
                      "--every steps; the MSE over the stream's last --tail fraction against the "
                      "best memoryless predictor's on the same steps.")
  st.add_argument("task", choices=STREAM_TASKS, help="the streaming task")
  st.add_argument("--rule", action="append", default=None, metavar="SPEC[,SPEC...]",
                  help="rules to compare (default: bp_lambda,eprop,tbptt:2): online rules and "
                  "tbptt:n; names: " + ", ".join(RULE_NAMES))
  st.add_argument("--isi", default="8", help="the cue-to-signal delay: N or MIN,MAX (steps)")
  st.add_argument("--iti", default="8,24", help="signal to the next cue: N or MIN,MAX (steps)")
  st.add_argument("--distractors", type=int, default=0, help="distractor input channels")
  st.add_argument("--distractor-rate", type=float, default=0.1,
                  help="a distractor's blip probability per step")
  st.add_argument("--cell", default="elementwise_lstm", help="cell name")
  st.add_argument("--hidden-size", type=int, default=16, help="hidden size")
  st.add_argument("--batch-size", type=int, default=4, help="streams learned together")
  st.add_argument("--steps", type=int, default=10_000, help="the stream's length (steps)")
  st.add_argument("--chunk", type=int, default=500, help="steps per compiled call")
  st.add_argument("--every", type=int, default=1, help="an optimiser update every k steps")
  st.add_argument("--lr", type=float, default=1e-2,
                  help="Adam's learning rate of the cell and the readout")
  st.add_argument("--lr-synth", type=float, default=1e-3,
                  help="Adam's learning rate of a synthesiser (BP(λ))")
  st.add_argument("--seeds", type=int, default=1, help="number of seeds (vmapped)")
  st.add_argument("--seed", type=int, default=0, help="the first seed")
  st.add_argument("--tail", type=float, default=0.25,
                  help="the fraction of the stream (its end) the error is averaged over")
  st.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="dtype")
  st.add_argument("--out", default=None, help="a directory for stream.json (none: print only)")
  st.add_argument("--overwrite", action="store_true", help="replace stream.json in --out")
  st.add_argument("--no-progress", action="store_true", help="no line per rule")
  st.add_argument("--print-config", action="store_true",
                  help="print the checked settings as JSON and exit")
  st.set_defaults(func=cmd_stream)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="bplambda", description=__doc__, formatter_class=_Formatter)
  sub = p.add_subparsers(dest="command", required=True)

  r = sub.add_parser("run", formatter_class=_Formatter, help="train rules on a task",
                     description="Train rules on a task into a results directory. Rules: "
                     + ", ".join(RULE_NAMES) + ". Config keys for --set and --config: see "
                     "--print-config.")
  r.add_argument("task", choices=sorted(RUN_TASKS), help="the task")
  r.add_argument("--rule", action="append", default=None, metavar="SPEC[,SPEC...]",
                 help="rules to compare, comma-separated or repeated (default: bp_lambda): a "
                 "name with options, e.g. 'bp_lambda(flavour=state, trace=dense, lambda_=0.9)', "
                 "'tbptt:3' (short for tbptt(n=3)), 'fast=dni:3(bootstrap=gamma)' (labelled "
                 "'fast'); names: " + ", ".join(RULE_NAMES))
  r.add_argument("--seeds", type=int, default=None, help="seeds per rule (default 3)")
  r.add_argument("--steps", type=int, default=None, help="updates per seed (default: preset)")
  r.add_argument("--epochs", type=float, default=None,
                 help="passes over the training split (sequential MNIST; default 50)")
  r.add_argument("--config", default=None, help="a JSON file of config keys")
  r.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="set a config key (repeatable), e.g. --set lr_synth=1e-4")
  r.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                 help="a grid axis (repeatable): every rule at every point of the grid, e.g. "
                 "--grid lambda_=0,0.5,1 --grid lr_synth=1e-4,1e-3; traced keys (lambda_, gamma, "
                 "sg_scale, lr_cell, lr_readout, lr_synth) share one compiled program, "
                 "structural ones (cell, hidden_size, seq_len, mode) compile one each")
  r.add_argument("--faithful", action="store_true",
                 help="the authors' conventions, quirks and (toy) budget")
  r.add_argument("--data-dir", default=None, help="tensorflow-datasets data dir (MNIST)")
  r.add_argument("--data-path", default=None,
                 help="a local MNIST copy: mnist.npz or a directory of IDX files")
  r.add_argument("--print-config", action="store_true",
                 help="print the resolved config as JSON and exit")
  _common(r, None)
  _add_renamed(r, "run")
  r.set_defaults(func=cmd_run)
  _add_toy(sub)
  _add_align(sub)
  _add_stream_parser(sub)
  return p


def _add_toy(sub) -> None:
  t = sub.add_parser("toy", formatter_class=_Formatter,
                     help="gradient alignment of BP(λ) synthetic gradients on the toy task")
  t.add_argument("--lambdas", default="0,0.5,0.9,1", help="comma-separated λ values in [0, 1]")
  t.add_argument("--gamma", type=float, default=1.0, help="discount γ in [0, 1]")
  t.add_argument("--seeds", type=int, default=5, help="number of seeds")
  t.add_argument("--seed", type=int, default=0, help="the first seed")
  t.add_argument("--steps", type=int, default=None,
                 help="updates (default 10,000; 1,000 with --faithful)")
  t.add_argument("--seq-len", type=int, default=10, help="sequence length T (horizon)")
  t.add_argument("--hidden-size", type=int, default=30, help="hidden size of the linear RNN")
  t.add_argument("--batch-size", type=int, default=10, help="batch size")
  t.add_argument("--lr-synth", type=float, default=None,
                 help="Adam learning rate of ĝ (default 1e-3; 1e-4 with --faithful)")
  t.add_argument("--plastic", action="store_true",
                 help="the plastic toy: the RNN and readout learn too (3 noisy targets)")
  t.add_argument("--mode", default="auto", choices=("auto", "online", "sequence"),
                 help="BP(λ)'s mode ('auto': sequence, the same numbers, cheaper)")
  t.add_argument("--faithful", action="store_true", help="the authors' conventions and quirks")
  t.add_argument("--set", action="append", metavar="KEY=VALUE", help="set a config key")
  t.add_argument("--print-config", action="store_true",
                 help="print the resolved config (with its grid over λ) as JSON and exit")
  _common(t, os.path.join("results", "toy"))
  _add_renamed(t, "toy")
  t.set_defaults(func=cmd_toy)


def _add_align(sub) -> None:
  a = sub.add_parser("align", formatter_class=_Formatter,
                     help="alignment of many learning rules with BPTT on one task")
  a.add_argument("--task", default="copy", help="'toy' (linear RNN, H=30) or 'copy' "
                 "(copy-repeat N=3, R=2, LSTM 16, batch 16)")
  a.add_argument("--rule", action="append", default=None, metavar="SPEC[,SPEC...]",
                 help="rules to measure, comma-separated or repeated, with options as in "
                 "'bplambda run' (default: " + DEFAULT_ALIGN_RULES + "); names: "
                 + ", ".join(RULE_NAMES))
  a.add_argument("--cell", default=None,
                 help="cell name (default: linear for toy, lstm for copy; e.g. columnar_lstm)")
  a.add_argument("--hidden-size", type=int, default=None, help="hidden size (toy 30, copy 16)")
  a.add_argument("--seeds", type=int, default=3, help="number of seeds")
  a.add_argument("--seed", type=int, default=0, help="the first seed")
  a.add_argument("--synth-steps", type=int, default=1000,
                 help="updates that train each synthesiser (network fixed) before measuring")
  a.add_argument("--lr-synth", type=float, default=1e-3, help="Adam learning rate of ĝ")
  a.add_argument("--lambda", dest="lambda_", type=float, default=1.0, help="BP(λ)'s λ")
  a.add_argument("--gamma", type=float, default=1.0, help="BP(λ)'s γ")
  a.add_argument("--out", default=None,
                 help="results directory (config, metrics log, alignment.json)")
  a.add_argument("--overwrite", action="store_true", help="replace the results in --out")
  a.add_argument("--no-progress", action="store_true", help="no progress bars")
  a.add_argument("--print-config", action="store_true",
                 help="print the settings that would run (sizes resolved) as JSON and exit")
  _add_renamed(a, "align")
  a.set_defaults(func=cmd_align)


def _raised_here(e: BaseException) -> bool:
  """Whether ``e`` was raised by this package's own code (a check), not deep inside a library."""
  tb = e.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE)


def main(argv=None) -> int:
  from bplambda_jax.experiments import Interrupted, ResultsError, RunError

  try:
    args = build_parser().parse_args(argv)
    return args.func(args)
  except RunError as e:
    print(f"stopped: {e}", file=sys.stderr)
    return EXIT_STOPPED
  except Interrupted as e:
    print(f"interrupted: {e}", file=sys.stderr)
    return EXIT_INTERRUPTED
  except KeyboardInterrupt as e:
    print(f"interrupted: {e or 'aborted'}", file=sys.stderr)
    from bplambda_jax.experiments._runner import computing
    if computing():  # the runtime cannot shut down under a running call: end at once
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED
  except (ConfigError, ResultsError) as e:  # a bad input the user can fix: one line
    print(f"error: {e}", file=sys.stderr)
    return EXIT_ERROR
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, (OSError, MemoryError)) and _raised_here(e):
      print(f"error: {e}", file=sys.stderr)  # a missing file, a run that cannot fit: one line
      return EXIT_ERROR
    traceback.print_exc()
    print("internal error: the traceback above is a bug in bplambda_jax, not in your input; "
          "please report it.", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
  sys.exit(main())
