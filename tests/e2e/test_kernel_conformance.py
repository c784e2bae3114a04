"""jupyter_kernel_test's protocol conformance tests against kernels running under the proxy.

Two kernels: the installed `python3-elastic` spec (ipykernel child), with the samples of
jupyter_kernel_test's own test_ipykernel.py, and `bash-elastic`, bash_kernel wrapped with
`elastic-proxy wrap bash`, with samples for what bash_kernel implements. Both also check the
proxy's own IOPub welcome (JEP 65), which the proxy sends itself for every subscription.
Plus what jupyter_kernel_test does not check but a client may rely on (connect_reply's ports).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jupyter_kernel_test as jkt
import pytest
from jupyter_client.manager import start_new_kernel

PYTHON_KERNEL = "python3-elastic"
BASH_KERNEL = "bash-elastic"


@pytest.fixture(scope="module", autouse=True)
def bash_elastic_spec(jupyter_env: Path) -> None:
    """bash_kernel's spec, then its elastic wrapper, in the session's private kernel prefix.

    Module scope so that it exists before unittest's setUpClass starts the kernel.
    """
    prefix = jupyter_env / "prefix"
    for argv in (["-m", "bash_kernel.install", "--prefix", str(prefix)],
                 ["-m", "elastic_proxy", "wrap", "bash", "--prefix", str(prefix)]):
        subprocess.run([sys.executable, *argv], check=True, capture_output=True, text=True)


class PythonElasticTests(jkt.KernelTests):
    """The samples of jupyter_kernel_test's own test_ipykernel.py.

    History "range" stays out, as there: a stock ipykernel fails it too (IPython answers a range
    of the current session with session number 0, not the absolute number that "tail" gave).
    """

    kernel_name = PYTHON_KERNEL
    support_iopub_welcome = True
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
         "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class PythonElasticWelcomeTests(jkt.IopubWelcomeTests):
    """A fresh client's first IOPub message is the proxy's welcome for its subscription."""

    kernel_name = PYTHON_KERNEL
    support_iopub_welcome = True


class BashElasticTests(jkt.KernelTests):
    """bash_kernel under the proxy: stdout, errors (non-zero exit), completion, rich display.

    bash_kernel runs bash on a pty, so stderr arrives merged into stdout, and it implements
    neither is_complete, inspect, history, pagers nor execute_result: those stay unset.
    """

    kernel_name = BASH_KERNEL
    support_iopub_welcome = True
    language_name = "bash"
    file_extension = ".sh"
    code_hello_world = "echo 'hello, world'"
    code_generate_error = "false"
    # Jupyter puts JPY_PARENT_PID in every kernel's environment; bash completes variables after `$`.
    completion_samples = [{"text": "$JPY_PARENT_P", "matches": {"$JPY_PARENT_PID"}}]
    code_display_data = [
        {"code": "echo '<b>test</b>' | displayHTML", "mime": "text/html"},
        {"code": "echo 'console.log(1)' | displayJS", "mime": "text/javascript"},
    ]


class BashElasticWelcomeTests(jkt.IopubWelcomeTests):
    kernel_name = BASH_KERNEL
    support_iopub_welcome = True


def test_connect_reply_names_the_ports_the_client_connected_to() -> None:
    """connect_request asks for the kernel's ports; the answer must be the client-facing ones.

    (ipykernel's own test_connect_request only checks the reply's schema.)
    """
    km, kc = start_new_kernel(kernel_name=PYTHON_KERNEL)
    try:
        request = kc.session.msg("connect_request")
        kc.shell_channel.send(request)
        while True:
            reply = kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                break
        info = km.get_connection_info()
        channels = ("shell", "iopub", "stdin", "control", "hb")
        expected = {f"{ch}_port": int(info[f"{ch}_port"]) for ch in channels}
        assert reply["msg_type"] == "connect_reply"
        assert {k: reply["content"].get(k) for k in expected} == expected
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
