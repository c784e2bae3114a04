"""The `elastic-proxy` command, run for real as a subprocess against private Jupyter directories,
with its results read back by jupyter_client's KernelSpecManager and the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from elastic_proxy import __version__
from elastic_proxy.cli import main

SUPERVISOR = [sys.executable, "-m", "elastic_proxy.proxy", "-f", "{connection_file}"]
ELASTIC_META = {"version": __version__, "child_kernel": None, "memory_limit": None}


@pytest.fixture
def jupyter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private Jupyter dirs and store for one test: the prefix `tmp/prefix` is on JUPYTER_PATH."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    monkeypatch.setenv("ELASTIC_PROXY_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("ELASTIC_PROXY_SECRET_FILE", str(tmp_path / "secret" / "key"))
    return tmp_path


def cli(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    """Run `elastic-proxy ARGS` in a fresh interpreter; expected errors never print a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "elastic_proxy", *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int | str | None, str, str]:
    """main(ARGS) in this process (fast, for the many small error and help cases): exit code, out, err."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def kernels(root: Path) -> Path:
    return root / "prefix" / "share" / "jupyter" / "kernels"


def read_spec(directory: Path) -> dict:
    return json.loads((directory / "kernel.json").read_text())


def install_bash_kernel(prefix: Path) -> None:
    subprocess.run([sys.executable, "-m", "bash_kernel.install", "--prefix", str(prefix)],
                   check=True, capture_output=True, timeout=60)


def test_install_writes_python3_elastic_that_jupyter_finds(jupyter: Path) -> None:
    done = cli("install", "--prefix", str(jupyter / "prefix"))
    directory = kernels(jupyter) / "python3-elastic"
    assert f"Installed kernelspec python3-elastic (Python 3 (elastic)) in {directory}" in done.stdout
    assert read_spec(directory) == {
        "argv": SUPERVISOR,
        "display_name": "Python 3 (elastic)",
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {"elastic_proxy": ELASTIC_META},
    }
    assert sorted(p.name for p in directory.iterdir()) == ["kernel.json", "logo-32x32.png", "logo-64x64.png"]
    spec = KernelSpecManager().get_kernel_spec("python3-elastic")
    assert spec.resource_dir == str(directory)
    assert spec.interrupt_mode == "message"


def test_install_for_the_user_with_name_display_name_and_memory_limit(jupyter: Path) -> None:
    cli("install", "--user", "--name", "py-safe", "--display-name", "Python (safe)", "--memory-limit", "2G")
    directory = jupyter / "data" / "kernels" / "py-safe"
    spec = read_spec(directory)
    assert spec["argv"] == [*SUPERVISOR, "--memory-limit", "2G"]
    assert spec["display_name"] == "Python (safe)"
    assert spec["metadata"]["elastic_proxy"]["memory_limit"] == "2G"
    assert KernelSpecManager().get_kernel_spec("py-safe").display_name == "Python (safe)"


def test_options_come_from_the_config_file_and_the_command_line_wins(jupyter: Path) -> None:
    config = jupyter / "config"
    config.mkdir()
    (config / "elastic_proxy_config.py").write_text(
        "c.InstallApp.memory_limit = '1G'\nc.InstallApp.display_name = 'From config'\n"
    )
    cli("install", "--user", "--memory-limit=3G")
    spec = read_spec(jupyter / "data" / "kernels" / "python3-elastic")
    assert spec["display_name"] == "From config"
    assert spec["argv"][-2:] == ["--memory-limit", "3G"]


def test_wrap_bash_copies_language_env_and_logos(jupyter: Path) -> None:
    install_bash_kernel(jupyter / "prefix")
    bash = KernelSpecManager().get_kernel_spec("bash")
    cli("wrap", "bash", "--prefix", str(jupyter / "prefix"), "--memory-limit", "512M")
    directory = kernels(jupyter) / "bash-elastic"
    expected = {
        "argv": [*SUPERVISOR, "--child-kernel", "bash", "--memory-limit", "512M"],
        "display_name": f"{bash.display_name} (elastic)",
        "language": bash.language,
        "interrupt_mode": "message",
        "metadata": {**bash.metadata, "elastic_proxy": {**ELASTIC_META, "child_kernel": "bash",
                                                        "memory_limit": "512M"}},
    }
    if bash.env:
        expected["env"] = bash.env
    assert read_spec(directory) == expected
    assert expected["display_name"] == "Bash (elastic)"
    for resource in Path(bash.resource_dir).iterdir():
        if resource.name != "kernel.json":
            assert (directory / resource.name).read_bytes() == resource.read_bytes()
    assert KernelSpecManager().get_kernel_spec("bash-elastic").language == "bash"


def test_wrap_python3_drops_curve_encryption(jupyter: Path) -> None:
    cli("wrap", "python3", "--user")
    spec = read_spec(jupyter / "data" / "kernels" / "python3-elastic")
    child = KernelSpecManager().get_kernel_spec("python3")
    assert spec["argv"] == [*SUPERVISOR, "--child-kernel", "python3"]
    assert spec["display_name"] == f"{child.display_name} (elastic)"
    assert spec["language"] == "python"
    assert "supported_encryption" not in spec["metadata"]
    assert spec["metadata"]["elastic_proxy"]["child_kernel"] == "python3"


def test_wrap_refuses_elastic_specs_unknown_names_and_wrapping_in_place(jupyter: Path) -> None:
    install_bash_kernel(jupyter / "prefix")
    cli("wrap", "bash", "--prefix", str(jupyter / "prefix"))

    again = cli("wrap", "bash-elastic", "--user", expect=2)
    assert "'bash-elastic' is already an elastic-proxy kernelspec" in again.stderr
    missing = cli("wrap", "cobol", "--user", expect=2)
    assert "no kernelspec named 'cobol'; installed: bash, bash-elastic, python3" in missing.stderr
    in_place = cli("wrap", "bash", "--name", "bash", "--prefix", str(jupyter / "prefix"), expect=2)
    assert "--name must differ" in in_place.stderr
    assert "argv" in read_spec(kernels(jupyter) / "bash") and "elastic_proxy.proxy" not in read_spec(
        kernels(jupyter) / "bash")["argv"]
    assert not (jupyter / "data" / "kernels").exists()


def test_install_and_wrap_never_overwrite_a_kernelspec_that_is_not_elastic(jupyter: Path) -> None:
    install_bash_kernel(jupyter / "prefix")
    bash_spec = read_spec(kernels(jupyter) / "bash")
    for command in (("install", "--name", "bash"), ("wrap", "python3", "--name", "Bash")):
        done = cli(*command, "--prefix", str(jupyter / "prefix"), expect=2)
        assert "a kernelspec named" in done.stderr and "that is not elastic-proxy's" in done.stderr
    assert read_spec(kernels(jupyter) / "bash") == bash_spec
    cli("install", "--prefix", str(jupyter / "prefix"), "--memory-limit", "1G")
    cli("install", "--prefix", str(jupyter / "prefix"))
    reinstalled = read_spec(kernels(jupyter) / "python3-elastic")
    assert "--memory-limit" not in reinstalled["argv"], "installing again replaces our own spec"


def test_location_flags_map_to_jupyter_install_arguments() -> None:
    from elastic_proxy.cli import InstallApp, UsageError

    assert InstallApp().location() == (False, None)
    assert InstallApp(user=True).location() == (True, None)
    assert InstallApp(sys_prefix=True).location() == (False, sys.prefix)
    assert InstallApp(prefix="/opt/env").location() == (False, "/opt/env")
    with pytest.raises(UsageError, match="--sys-prefix and --prefix contradict"):
        InstallApp(sys_prefix=True, prefix="/opt/env").location()


def test_list_shows_elastic_specs_with_child_and_memory_limit(jupyter: Path) -> None:
    assert "No elastic-proxy kernelspecs installed" in cli("list").stdout
    install_bash_kernel(jupyter / "prefix")
    cli("install", "--prefix", str(jupyter / "prefix"), "--memory-limit", "4G")
    cli("wrap", "bash", "--prefix", str(jupyter / "prefix"))

    table = cli("list").stdout.splitlines()
    assert table[0].split() == ["NAME", "DISPLAY", "NAME", "CHILD", "MEMORY", "LIMIT", "LOCATION"]
    assert table[1].split() == ["bash-elastic", "Bash", "(elastic)", "bash", "none",
                                str(kernels(jupyter) / "bash-elastic")]
    assert table[2].split()[:5] == ["python3-elastic", "Python", "3", "(elastic)", "ipykernel"]
    assert "4G" in table[2].split()
    assert len(table) == 3, "the plain bash and python3 kernels are not listed"

    listed = json.loads(cli("list", "--json").stdout)["kernelspecs"]
    assert listed["bash-elastic"] == {
        "display_name": "Bash (elastic)", "child_kernel": "bash", "memory_limit": None,
        "resource_dir": str(kernels(jupyter) / "bash-elastic"),
    }
    assert listed["python3-elastic"]["memory_limit"] == "4G"


def test_uninstall_removes_only_elastic_specs(jupyter: Path) -> None:
    install_bash_kernel(jupyter / "prefix")
    cli("wrap", "bash", "--prefix", str(jupyter / "prefix"))

    refused = cli("uninstall", "bash", expect=2)
    assert "'bash' is not an elastic-proxy kernelspec" in refused.stderr
    unknown = cli("uninstall", "nope", expect=2)
    assert "elastic ones installed: bash-elastic" in unknown.stderr
    assert "Removed kernelspec bash-elastic" in cli("uninstall", "bash-elastic").stdout

    manager = KernelSpecManager()
    with pytest.raises(NoSuchKernel):
        manager.get_kernel_spec("bash-elastic")
    assert manager.get_kernel_spec("bash").language == "bash"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no command given; choose one of: install, wrap, list, uninstall, checkpoints"),
        (("instal",), "unknown command 'instal'"),
        (("install", "--usr"), "unknown option --usr"),
        (("install", "--usr=1"), "unknown option --usr"),
        (("install", "--memory-limit", "lots"), "--memory-limit: invalid memory size 'lots'"),
        (("install", "--user", "--sys-prefix"), "--user and --sys-prefix contradict each other"),
        (("install", "--user", "--name", "a/b"), "invalid kernelspec name 'a/b'"),
        (("install", "extra"), "`elastic-proxy install` takes no arguments"),
        (("wrap",), "`elastic-proxy wrap` takes KERNEL"),
        (("uninstall",), "`elastic-proxy uninstall` takes NAME..., got none"),
        (("checkpoints", "show"), "`elastic-proxy checkpoints show` takes SESSION"),
        (("checkpoints", "gc", "--keep-last", "0"), "--keep-last must be at least 1"),
        (("checkpoints", "gc", "--keep-last", "many"), "'keep_last' trait of a CheckpointsGcApp instance"),
    ],
)
def test_usage_errors_exit_2_with_a_hint_and_change_nothing(
    jupyter: Path, capsys: pytest.CaptureFixture, args: tuple, message: str
) -> None:
    code, _, err = in_process(capsys, *args)
    assert code == 2
    assert err.startswith("elastic-proxy: error: ")
    assert message in err
    assert not (jupyter / "data" / "kernels").exists()
    assert not (jupyter / "prefix").exists()


def test_a_usage_error_from_the_real_command_has_exit_status_2_and_no_traceback(jupyter: Path) -> None:
    done = cli("install", "--usr", expect=2)
    assert done.stdout == ""
    assert done.stderr == "elastic-proxy: error: unknown option --usr (see `elastic-proxy install --help`)\n"


@pytest.mark.parametrize(
    "command",
    [(), ("install",), ("wrap",), ("list",), ("uninstall",), ("checkpoints",), ("checkpoints", "list"),
     ("checkpoints", "show"), ("checkpoints", "forget"), ("checkpoints", "gc")],
)
def test_every_command_has_help(jupyter: Path, capsys: pytest.CaptureFixture, command: tuple) -> None:
    code, out, _ = in_process(capsys, *command, "--help")
    assert code == 0
    assert out.startswith(" ".join(("Usage: elastic-proxy", *command)) + " ")
    if command[:1] in (("install",), ("wrap",)):
        assert all(option in out for option in ("--user", "--sys-prefix", "--prefix", "--name",
                                                "--display-name", "--memory-limit"))


def test_failure_to_write_exits_1_and_says_what_to_do(jupyter: Path) -> None:
    read_only = jupyter / "prefix"
    (read_only / "share" / "jupyter").mkdir(parents=True)
    (read_only / "share" / "jupyter" / "kernels").write_text("not a directory")
    done = cli("install", "--prefix", str(read_only), expect=1)
    assert done.stderr.startswith("elastic-proxy: error: installing 'python3-elastic' failed")


def _commit_generations(session: str, count: int) -> None:
    from elastic_proxy.store import open_store

    store = open_store(session)
    for cell in range(1, count + 1):
        ref = store.put_group({"a": list(range(cell * 100))})
        store.commit({
            "cells": [], "graph": {}, "plan": {}, "groups": {"g1": ref.to_json()},
            "variables": {"a": {"group": "g1", "fingerprint": "f", "type": "list", "size": ref.size}},
            "execution_count": cell, "lost": {"gen": "generator: cannot be pickled"},
        })


def test_checkpoints_list_show_gc_forget(jupyter: Path) -> None:
    _commit_generations("notebooks/a.ipynb", 3)
    _commit_generations("b.ipynb", 1)

    sessions = cli("checkpoints", "list").stdout.splitlines()
    assert sessions[0].split() == ["SESSION", "GENERATIONS", "NEWEST", "UPDATED"]
    assert sorted(line.split()[:3] for line in sessions[1:]) == [["b.ipynb", "1", "1"],
                                                                 ["notebooks/a.ipynb", "3", "3"]]
    generations = cli("checkpoints", "list", "notebooks/a.ipynb").stdout.splitlines()
    assert [line.split()[0] for line in generations[1:]] == ["3", "2", "1"]
    assert all(line.endswith("valid") for line in generations[1:])

    shown = cli("checkpoints", "show", "notebooks/a.ipynb", "--verify").stdout
    assert "generation:  3 (parent 2), valid, every blob verified" in shown
    assert "lost: gen: generator: cannot be pickled" in shown
    assert [line.split()[:2] for line in shown.splitlines() if line.startswith("a ")] == [["a", "list"]]
    assert "generation:  1 (parent None)" in cli("checkpoints", "show", "notebooks/a.ipynb",
                                                 "--generation", "1").stdout

    gc = cli("checkpoints", "gc", "notebooks/a.ipynb", "--keep-last", "1").stdout
    assert "notebooks/a.ipynb: kept generations [3], deleted 2 manifests" in gc
    assert len(cli("checkpoints", "list", "notebooks/a.ipynb").stdout.splitlines()) == 2

    unconfirmed = cli("checkpoints", "forget", "b.ipynb", expect=2)
    assert "needs -y to confirm" in unconfirmed.stderr
    cli("checkpoints", "forget", "b.ipynb", "-y")
    remaining = cli("checkpoints", "list").stdout
    assert "b.ipynb" not in remaining.replace("notebooks/a.ipynb", "")
    missing = cli("checkpoints", "show", "b.ipynb", expect=2)
    assert "no checkpoints for session 'b.ipynb'; sessions in the store: notebooks/a.ipynb" in missing.stderr
    other_store = cli("checkpoints", "list", "--store", str(jupyter / "other")).stdout
    assert other_store == "No checkpoints in the store.\n"


def test_checkpoints_show_reports_a_tampered_manifest(jupyter: Path) -> None:
    _commit_generations("nb.ipynb", 2)
    manifest = sorted((jupyter / "store").glob("nb.ipynb-*/manifests/*.json"))[-1]
    doc = json.loads(manifest.read_text())
    doc["execution_count"] = 99
    manifest.write_text(json.dumps(doc))

    generations = cli("checkpoints", "list", "nb.ipynb").stdout.splitlines()
    assert "INVALID" in generations[1] and generations[2].endswith("valid")
    assert "generation:  1 (parent None), valid" in cli("checkpoints", "show", "nb.ipynb").stdout
    tampered = cli("checkpoints", "show", "nb.ipynb", "--generation", "2", expect=1)
    assert "INVALID" in tampered.stdout
    assert "generation 2 of 'nb.ipynb' cannot be restored" in tampered.stderr


def test_the_wrapped_bash_kernel_starts_under_the_supervisor_and_runs_cells(jupyter: Path) -> None:
    """The argv we write is one the supervisor accepts: start bash-elastic the way Jupyter would."""
    from jupyter_client.manager import start_new_kernel

    install_bash_kernel(jupyter / "prefix")
    cli("wrap", "bash", "--prefix", str(jupyter / "prefix"))
    # bash_kernel's bash sources ~/.bashrc: a private HOME keeps the developer's shell setup out (a stale
    # pyenv rehash lock there once made every interactive bash wait, and this test time out).
    home = jupyter / "bash-home"
    home.mkdir(exist_ok=True)
    manager, client = start_new_kernel(kernel_name="bash-elastic", startup_timeout=60,
                                       env={**os.environ, "HOME": str(home)})
    try:
        assert manager.kernel_spec.argv[2] == "elastic_proxy.proxy"
        replies = [client.execute_interactive(code, timeout=30) for code in ("X=41", "echo $((X + 1))")]
        assert [reply["content"]["status"] for reply in replies] == ["ok", "ok"]
        outputs: list[str] = []
        client.execute_interactive(
            "echo $((X + 1))", timeout=30,
            output_hook=lambda msg: outputs.append(msg["content"].get("text", "")),
        )
        assert "".join(outputs).strip() == "42"
    finally:
        client.stop_channels()
        manager.shutdown_kernel()
