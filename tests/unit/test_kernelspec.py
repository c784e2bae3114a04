"""The kernelspecs we write: built from real KernelSpec objects, installed into temporary Jupyter dirs
and read back by jupyter_client's KernelSpecManager."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

from elastic_proxy import __version__
from elastic_proxy import kernelspec as specs

PACKAGE_LOGOS = Path(specs.__file__).parent


def _fake_child(tmp_path: Path) -> KernelSpec:
    """An installed-looking kernelspec of another language, with resources and CurveZMQ support."""
    resource_dir = tmp_path / "fake"
    resource_dir.mkdir()
    (resource_dir / "logo-64x64.png").write_bytes(b"fake logo")
    (resource_dir / "kernel.js").write_text("// fake\n")
    spec = {
        "argv": ["/usr/bin/fakelang", "--kernel", "{connection_file}"],
        "display_name": "Fake Lang",
        "language": "fakelang",
        "interrupt_mode": "signal",
        "env": {"FAKE_HOME": "/opt/fake"},
        "metadata": {
            "debugger": True,
            "supported_encryption": ["curve"],
            "kernel_provisioner": {"provisioner_name": "remote-provisioner"},
            "vendor": {"x": 1},
        },
    }
    (resource_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpec.from_resource_dir(str(resource_dir))


def test_python_spec_runs_the_supervisor_over_our_own_ipykernel() -> None:
    assert specs.python_spec() == {
        "argv": [sys.executable, "-m", "elastic_proxy.proxy", "-f", "{connection_file}"],
        "display_name": "Python 3 (elastic)",
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {"elastic_proxy": {"version": __version__, "child_kernel": None, "memory_limit": None}},
    }


def test_python_spec_passes_the_memory_limit_to_the_supervisor() -> None:
    spec = specs.python_spec("Py (safe)", memory_limit="2G")
    assert spec["argv"][-2:] == ["--memory-limit", "2G"]
    assert spec["display_name"] == "Py (safe)"
    assert spec["metadata"]["elastic_proxy"]["memory_limit"] == "2G"


def test_wrapped_spec_copies_the_child_but_not_encryption_nor_provisioner(tmp_path: Path) -> None:
    spec = specs.wrapped_spec("fake", _fake_child(tmp_path), memory_limit="512M")
    assert spec == {
        "argv": [sys.executable, "-m", "elastic_proxy.proxy", "-f", "{connection_file}",
                 "--child-kernel", "fake", "--memory-limit", "512M"],
        "display_name": "Fake Lang (elastic)",
        "language": "fakelang",
        "interrupt_mode": "message",
        "env": {"FAKE_HOME": "/opt/fake"},
        "metadata": {
            "debugger": True,
            "vendor": {"x": 1},
            "elastic_proxy": {"version": __version__, "child_kernel": "fake", "memory_limit": "512M"},
        },
    }


def test_elastic_specs_are_recognised_by_metadata_or_argv(tmp_path: Path) -> None:
    child = _fake_child(tmp_path)
    assert specs.elastic_info(child) is None
    assert specs.elastic_info(specs.python_spec())["child_kernel"] is None
    hand_written = {"argv": ["python", "-m", "elastic_proxy.proxy", "-f", "{connection_file}"]}
    assert specs.elastic_info(hand_written) is not None
    wrapped = KernelSpec(**specs.wrapped_spec("fake", child))
    assert specs.elastic_info(wrapped)["child_kernel"] == "fake"


def test_install_spec_copies_resources_keeps_them_readable_and_jupyter_finds_it(tmp_path: Path) -> None:
    child = _fake_child(tmp_path)
    prefix = tmp_path / "prefix"
    manager = KernelSpecManager(kernel_dirs=[str(prefix / "share" / "jupyter" / "kernels")])
    spec = specs.wrapped_spec("fake", child)
    destination = Path(specs.install_spec(manager, spec, "fake-elastic", Path(child.resource_dir),
                                          prefix=str(prefix)))

    assert destination == prefix / "share" / "jupyter" / "kernels" / "fake-elastic"
    assert json.loads((destination / "kernel.json").read_text()) == spec
    assert (destination / "kernel.js").read_text() == "// fake\n"
    assert (destination / "logo-64x64.png").read_bytes() == b"fake logo", "the child's own logo wins"
    assert (destination / "logo-32x32.png").read_bytes() == (PACKAGE_LOGOS / "logo-32x32.png").read_bytes()
    assert stat.S_IMODE(destination.stat().st_mode) & 0o055 == 0o055, "system-wide specs must be readable"
    found = manager.get_kernel_spec("fake-elastic")
    assert found.display_name == "Fake Lang (elastic)"
    assert found.interrupt_mode == "message"
    assert found.argv == spec["argv"]


def test_install_spec_without_resources_gets_our_logos_only(tmp_path: Path) -> None:
    manager = KernelSpecManager(kernel_dirs=[])
    destination = Path(specs.install_spec(manager, specs.python_spec(), specs.KERNEL_NAME,
                                          prefix=str(tmp_path)))
    assert sorted(p.name for p in destination.iterdir()) == ["kernel.json", *specs.LOGO_FILES]


@pytest.mark.parametrize("name", ["a/b", "", "no spaces", "../up"])
def test_install_spec_refuses_names_jupyter_would_not_accept(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid kernelspec name"):
        specs.install_spec(KernelSpecManager(kernel_dirs=[]), specs.python_spec(), name, prefix=str(tmp_path))
    assert not (tmp_path / "share").exists()
