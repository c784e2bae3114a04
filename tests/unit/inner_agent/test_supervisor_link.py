"""Which cells the agent lets the supervisor re-run after a crash (pure AST reading)."""

from __future__ import annotations

import pytest

from elastic_proxy.inner_agent.supervisor_link import unsafe_to_rerun


@pytest.mark.parametrize("code", [
    "x = 1",
    "y = [i * i for i in range(10)]",
    "df = open('data.csv').read()",
    "with open('data.csv', 'r') as f:\n    rows = f.readlines()",
    "import numpy as np\nnp.random.seed(0)\na = np.random.rand(3)",
])
def test_safe_cells(code):
    assert unsafe_to_rerun(code) is None


@pytest.mark.parametrize("code, reason", [
    ("import numpy as np\na = np.random.rand(3)", "nondeterministic"),
    ("import random\nr = random.random()", "nondeterministic"),
    ("import random, numpy as np\nrandom.seed(0)\na = np.random.rand(3)", "nondeterministic"),
    ("log = open('out.txt', 'w')", "opens a file for writing"),
    ("log = open('out.txt', mode='a')", "opens a file for writing"),
    ("f = open(name, mode)", "mode computed at run time"),
    ("import os\nos.remove('x')", "writes or deletes files"),
    ("import shutil\nshutil.rmtree('d')", "writes or deletes files"),
    ("df.to_csv('out.csv')", "writes or deletes files"),
    ("import subprocess\nsubprocess.run(['ls'])", "runs a process"),
    ("__import__('os').system('echo appended >> LOG')", "runs a process"),
    ("get_ipython().system('ls')", "runs a process"),
    ("__import__('socket').create_connection(('127.0.0.1', 80)).close()", "outside world"),
    ("import requests\nrequests.post('http://x', json={})", "outside world"),
    ("con.execute('insert into t values (1)')\ncon.commit()", "outside world"),
])
def test_unsafe_cells_say_why(code, reason):
    assert reason in unsafe_to_rerun(code)
