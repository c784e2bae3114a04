"""Recorder in a real IPython shell: what each cell read, created, rebound, mutated and deleted."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell

from elastic_proxy.inner_agent.graph import CellExecution
from elastic_proxy.inner_agent.recorder import Recorder, estimate_size


@pytest.fixture
def rec():
    shell = InteractiveShell()
    recorder = Recorder(shell)
    shell.events.register("pre_run_cell", recorder.pre_run_cell)
    shell.events.register("post_run_cell", recorder.post_run_cell)
    return recorder


def cell(rec: Recorder, code: str) -> CellExecution:
    rec.shell.run_cell(code, store_history=True)
    return rec.graph.cells[max(rec.graph.cells)]


def test_bind_rebind_mutate_delete(rec):
    c = cell(rec, "x = [1]\ny = 2")
    assert c.created == {"x", "y"} and not c.reads
    c = cell(rec, "x = [5]")
    assert c.rebound == {"x"} and "x" not in c.reads, "overwriting a name is not reading it"
    c = cell(rec, "x.append(3)")
    assert c.mutated == {"x"} and "x" in c.reads
    c = cell(rec, "del y")
    assert c.deleted == {"y"}


def test_attribute_and_deep_edits_are_mutations(rec):
    cell(rec, "import numpy as np\nclass P:\n    pass\np = P()\np.v = 1\nd = {'a': {'b': [np.zeros(4)]}}")
    assert cell(rec, "p.v = 2").mutated == {"p"}
    assert cell(rec, "d['a']['b'][0][2] = 7").mutated == {"d"}
    assert cell(rec, "p.v = 2").mutated == frozenset(), "same value again is no change"


def test_mutation_through_an_alias_and_through_a_notebook_function(rec):
    cell(rec, "a = [1]\nb = a\nlog = []\ndef note(v):\n    log.append(v)")
    assert cell(rec, "b.append(2)").mutated == {"a", "b"}
    c = cell(rec, "note(3)")
    assert c.mutated == {"log"} and "log" in c.reads


def test_magics_dynamic_names_and_failed_cells(rec):
    assert cell(rec, "%%time\ntimed = 1").created == {"timed"}
    assert cell(rec, "exec('e = 1')\nglobals()['g'] = 2").created == {"e", "g"}
    cell(rec, "lst = [1]")
    c = cell(rec, "lst.append(2)\n1 / 0")
    assert c.mutated == {"lst"} and c.error == "ZeroDivisionError"


def test_a_mutation_no_name_in_the_cell_refers_to_is_still_seen(rec):
    cell(rec, "L = [1]\nM = {'a': 1}\nclass C:\n    def __init__(self):\n        self.hook = lambda: M.update(h=1)\n"
              "def outer():\n    M['b'] = 2\nfns = {'run': outer}\nc = C()")
    assert cell(rec, "exec('L.append(2)')").mutated == {"L"}, "exec reaches names the cell does not mention"
    assert cell(rec, "fns['run']()").mutated == {"M"}, "a notebook function held in a dict"
    assert cell(rec, "c.hook()").mutated == {"M"}, "a notebook function held by an instance"


def test_big_values_are_fingerprinted_later_not_in_the_hook(rec):
    rec.defer_above = 1000
    c = cell(rec, "import numpy as np\nbig = np.zeros(10_000)\nsmall = 1")
    assert c.created >= {"big", "small"}
    assert "big" in rec.deferred and "small" not in rec.deferred
    assert cell(rec, "big.sum()").mutated == {"big"}, "until fingerprinted, touching counts as a change"


def test_names_there_before_the_agent_are_taken_over_not_credited_to_a_cell(rec):
    rec.shell.run_cell("import os", store_history=True)
    rec.shell.user_ns["early"] = [1]
    c = cell(rec, "late = early + [2]")
    assert c.created == {"late"} and not c.mutated
    assert "early" in rec.adopted and "early" in rec.fingerprints
    assert rec.graph.producers("early") == [], "no cell made it: it can only be loaded"
    assert "__name__" not in rec.fingerprints and "__builtins__" not in rec.fingerprints


def test_size_estimate_of_a_cyclic_graph_of_big_containers_ends():
    """A Comm holds the kernel, which reaches the whole process through big dicts that point
    back at each other: nested sampling walks each with its own budget recursed forever."""
    a: dict[int, dict] = {}
    b: dict[int, dict] = {i: a for i in range(3000)}
    a.update({i: b for i in range(3000)})
    assert 0 < estimate_size(a) < 100 << 20


def test_size_estimate_samples_big_containers_and_skips_what_cannot_be_asked():
    class Proxy:
        def __getattr__(self, name):
            raise RuntimeError("not connected")

    arrays = [np.zeros(1000) for _ in range(5000)]
    assert estimate_size(arrays) == pytest.approx(5000 * 8000, rel=0.01)
    assert estimate_size({"x": np.zeros(10**6), "p": Proxy()}) >= 8_000_000


def _draws(c: CellExecution) -> bool:
    return any("numpy.random generator" in reason for reason in c.nondeterministic)


def test_each_cell_is_judged_on_its_own_draws_while_states_carry_over(rec):
    """A cell's starting generator states are the previous cell's final ones (not read again)."""
    cell(rec, "import numpy as np")
    assert _draws(cell(rec, "a = np.random.rand(3)"))
    assert not _draws(cell(rec, "b = 1")), "the draws of the cell before are not this cell's"
    assert _draws(cell(rec, "c = np.random.rand(3)"))


def test_draws_between_cells_count_against_the_next_one_unless_paused(rec):
    cell(rec, "import numpy as np")
    cell(rec, "b = 1")
    np.random.rand(3)  # as a widget's callback would, between two cells
    assert _draws(cell(rec, "c = 2")), "when in doubt, the cell is not reproducible"
    rec.paused = True  # a restore re-running cells: the generators move unrecorded
    np.random.rand(3)
    rec.paused = False
    assert not _draws(cell(rec, "d = 3"))
