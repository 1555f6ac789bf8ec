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


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
  return {s: collect.regen_values(s, str(tmp_path_factory.mktemp(s) / "out")) for s in COMMITTED}


@pytest.mark.slow  # one CLI run (a subprocess: the command as users run it), about 10 s idle
def test_cheap_commands_reproduce_their_committed_values(rerun):
  assert set(COMMITTED) == set(collect.REGEN)
  for section, entry in COMMITTED.items():
    assert entry["command"] == collect.REGEN[section], section
    assert collect.regen_mismatches(entry, rerun[section]) == [], section


@pytest.mark.slow
def test_a_hand_edited_committed_value_fails_the_check(rerun):
  for section, entry in COMMITTED.items():
    edited = copy.deepcopy(entry)
    label = next(iter(edited["values"]))
    edited["values"][label][0] += 0.001
    bad = collect.regen_mismatches(edited, rerun[section])
    assert [b[0] for b in bad] == [label], (section, bad)
