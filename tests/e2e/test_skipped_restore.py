"""A restore that runs out of memory is not tried again: the next kernel process starts empty, its
first cell lists the largest variables, and `%elastic restore --skip` brings back the rest.

Through the whole product: the supervisor with a memory cgroup smaller than the session's state
(the notebook reopened on a smaller machine), the OOM kill during the restore, the agent's notice."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.harness import elastic_kernel, install_variant, run, stdout_of

pytestmark = pytest.mark.timeout(240)

WAIT_FOR_CHECKPOINT = (
    "__import__('elastic_proxy.inner_agent', fromlist=['_']).get_agent(get_ipython()).checkpointer.wait(120)"
)


@pytest.fixture(scope="module", autouse=True)
def kernelspecs(jupyter_env):
    prefix = jupyter_env / "prefix"
    install_variant(prefix, "elastic-skip-roomy", "--storm-limit", "100")
    install_variant(prefix, "elastic-skip-tight", "--storm-limit", "100", "--memory-limit", "250M")


def displays(outputs: list[dict]) -> list[str]:
    return [o["content"]["data"]["text/plain"] for o in outputs if o["msg_type"] == "display_data"]


def test_a_restore_killed_by_memory_is_skipped_and_the_rest_comes_back_on_request():
    env = {"JPY_SESSION_NAME": f"notebooks/skip-{uuid.uuid4().hex[:8]}.ipynb"}
    with elastic_kernel("elastic-skip-roomy", env=env) as (_, kc):
        for cell in ("import numpy as np", "big = np.random.rand(40_000_000)", "small = {'a': [1, 2, 3]}",
                     "medium = np.arange(1_000_000)", WAIT_FOR_CHECKPOINT):
            reply, _ = run(kc, cell, timeout=120)
            assert reply["status"] == "ok", (cell, reply)
    with elastic_kernel("elastic-skip-tight", env=env) as (_, kc):
        reply, outputs = run(kc, "print('big' in globals())", timeout=180)
        assert reply["status"] == "ok", reply
        # The restore's progress display, shown while the cell waits for the restore, may come first.
        shown = [text for text in displays(outputs) if not text.startswith("elastic-proxy: restoring the session")]
        assert shown and shown[0].startswith(
            "elastic: the restore was skipped: restoring the last checkpoint ran out of memory"), outputs
        rows = [line.split() for line in shown[0].split("largest variables:")[1].splitlines()[1:3]]
        assert rows[0][:3] == ["big", "numpy.ndarray", "305.2"] and rows[1][0] == "medium", shown[0]
        assert "%elastic restore --skip big" in shown[0] and "%elastic reset" in shown[0], shown[0]
        assert stdout_of(outputs).endswith("False\n"), outputs
        _, outputs = run(kc, "%elastic restore --skip big", timeout=120)
        assert any("LOST big: skipped at your request" in text for text in displays(outputs)), outputs
        _, outputs = run(kc, "print('big' in globals(), small, int(medium.sum()))")
        assert stdout_of(outputs) == "False {'a': [1, 2, 3]} 499999500000\n", outputs
