"""The cheap command of each results section, re-run at HEAD, reproduces its committed values
(docs/results/regen.json, written by ``python docs/results/collect.py --regen``)."""

import copy
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("collect", os.path.join(ROOT, "docs", "results",
                                                                        "collect.py"))
collect = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(collect)
COMMITTED = json.load(open(collect.REGEN_PATH))
SECTIONS = sorted(collect.REGEN)


def _rerun(section, tmp_path_factory):
  """The values of the section's cheap command re-run; skipped where its data source is not the
  one its values were committed with."""
  got = collect.regen_values(section, str(tmp_path_factory.mktemp(section) / "out"))
  want = COMMITTED[section].get("data")
  if got["data"] != want:
    pytest.skip(f"{section}: data from {got['data']!r}, committed values from {want!r}")
  return got["values"]


def test_every_section_has_a_committed_cheap_command():
  assert set(COMMITTED) == set(collect.REGEN) >= set(collect.PLAN)
  for section, entry in COMMITTED.items():
    assert entry["command"] == collect.REGEN[section]["command"], section
    assert entry["metrics"] == list(collect.REGEN[section]["metrics"]), section
    assert entry["values"] and all(set(v) == set(entry["metrics"]) and all(v.values())
                                   for v in entry["values"].values()), section


@pytest.mark.slow  # one CLI run per section (a subprocess: the command as users run it), 3–10 s
@pytest.mark.parametrize("section", SECTIONS)
def test_cheap_command_reproduces_its_committed_values(section, tmp_path_factory):
  """The re-run equals the committed values, and the same check fails a hand-edited value (one
  test per section, so that a parallel run does not run the command twice)."""
  values = _rerun(section, tmp_path_factory)
  assert collect.regen_mismatches(COMMITTED[section], values) == [], section
  edited = copy.deepcopy(COMMITTED[section])
  label = next(iter(edited["values"]))
  metric = next(iter(edited["values"][label]))
  edited["values"][label][metric][0] += 0.001
  bad = collect.regen_mismatches(edited, values)
  assert [b[:2] for b in bad] == [(label, metric)], (section, bad)
