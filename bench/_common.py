"""Workloads and statistics shared by the benches that time trivial cells against a baseline.

agent_overhead.py (the inner agent vs plain ipykernel) and peers_bench.py (elastic-proxy vs
ElasticKernel vs plain ipykernel) time the same cells on the same namespaces, so their figures
can be read side by side.
"""

from __future__ import annotations

#: The namespaces a trivial cell is timed with: (label, the cell that builds it). The cells assume
#: `import numpy as np` and `n = 0` have run (START).
SCENARIOS = [
    ("(a) empty namespace", "pass"),
    ("(b) 200 MB array", "big = np.ones(25_000_000)"),
    ("(c) list(range(5_000_000))", "big = list(range(5_000_000))"),
    ("(d) 1M-entry dict", "big = {i: str(i) for i in range(1_000_000)}"),
]
START = "import numpy as np\nn = 0"
#: `1 + 1` changes nothing. `x = 1` binds a name again to an equal value: after its first run there
#: is nothing new to checkpoint. `n += 1` changes the state every time, so a checkpointing kernel
#: writes after every run.
TRIVIAL = [("`1 + 1`", "1 + 1"), ("`x = 1`", "x = 1"), ("`n += 1`", "n += 1")]
#: What undoes a scenario's cell, so the next one starts from the same namespace.
CLEAR = "big = None"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def delta(baseline: float, measured: float) -> str:
    return f"{(measured - baseline) * 1000:+.2f}"
