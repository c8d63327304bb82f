"""Security by default, checked on the source and the configs rather than promised in prose."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from model_server.manager import LocalLLMServer
from bus.transport import LOOPBACK, free_tcp_endpoint
from storage.recorder import RecorderConfig
from tests.helpers import agent_config

REPO = Path(__file__).resolve().parents[1]


def project_sources(root: Path = REPO) -> list[Path]:
    """The project's own modules: top-level ``*.py`` and every package (a folder with ``__init__.py``) but
    tests. A virtual environment or build folder inside the checkout is neither, whatever its name."""
    packages = [d for d in root.iterdir() if (d / "__init__.py").is_file() and d.name != "tests"]
    return sorted([*root.glob("*.py"), *(p for d in packages for p in d.rglob("*.py"))])


def calls_and_imports(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text(), str(path))
    calls, imports = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                calls.add(func.id)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                calls.add(f"{func.value.id}.{func.attr}")
        elif isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imports.add(node.module)
    return calls, imports


def violations(path: Path, name: str) -> list[str]:
    """What in ``path`` evaluates code or loads a pickle (``name``: its path in the project)."""
    calls, imports = calls_and_imports(path)
    found = []
    if {"eval", "exec", "compile"} & calls:
        found.append(f"{name} evaluates code")
    if {"torch.load", "pickle.load", "pickle.loads"} & calls:
        found.append(f"{name} loads a pickle")
    if name != "tasks/mnist/data.py" and {"pickle", "dill", "cloudpickle", "marshal"} & imports:
        found.append(f"{name} imports a pickle module")  # tasks/mnist/data.py: the pinned MNIST copy, numpy-only unpickler
    return found


def test_no_eval_exec_or_pickle_beyond_the_pinned_mnist_unpickler():
    sources = project_sources()
    names = {p.relative_to(REPO).as_posix() for p in sources}
    assert {"run.py", "agents/service.py", "tasks/mnist/data.py", "storage/recorder.py", "bus/transport.py"} <= names
    assert not any(n.startswith(("tests/", ".venv/", "build/")) for n in names)
    assert [v for p in sources for v in violations(p, p.relative_to(REPO).as_posix())] == []


def test_the_check_catches_eval_and_pickle_in_a_project_module(tmp_path):
    module = tmp_path / "sneaky.py"
    module.write_text("import pickle\nx = eval('1 + 1')\ny = pickle.loads(b'')\n")
    assert violations(module, "agents/sneaky.py") == [
        "agents/sneaky.py evaluates code", "agents/sneaky.py loads a pickle", "agents/sneaky.py imports a pickle module",
    ]  # fmt: skip


def test_a_venv_or_build_folder_inside_the_checkout_is_not_walked(tmp_path):
    for name in ["run.py", "agents/__init__.py", "agents/nodes/__init__.py", "agents/nodes/x.py",
                 ".venv/lib/python3.11/site-packages/typing_extensions.py", "build/lib/agents/__init__.py",
                 "venv/bin/activate_this.py", "tests/test_x.py", "tests/__init__.py"]:  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = eval('1')\n")
    found = [p.relative_to(tmp_path).as_posix() for p in project_sources(tmp_path)]
    assert found == ["agents/__init__.py", "agents/nodes/__init__.py", "agents/nodes/x.py", "run.py"]


def test_every_socket_and_the_model_server_default_to_loopback(tmp_path):
    recorder = RecorderConfig(
        db_path=tmp_path / "x.duckdb",
        endpoint=free_tcp_endpoint(),
        control_endpoint=free_tcp_endpoint(),
        run_dir=tmp_path,
    )
    assert recorder.endpoint.startswith(f"tcp://{LOOPBACK}:") and recorder.control_endpoint.startswith(
        f"tcp://{LOOPBACK}:"
    )
    with pytest.raises(ValueError, match="not loopback"):
        RecorderConfig(db_path=tmp_path / "x.duckdb", endpoint="tcp://0.0.0.0:5555",
                       control_endpoint=free_tcp_endpoint(), run_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="not loopback"):
        agent_config(endpoint="tcp://192.168.1.5:5555", recorder_endpoint=recorder.endpoint, run_dir=tmp_path)
    server = LocalLLMServer(tmp_path / "llm.log")
    assert server.host == LOOPBACK and server.base_url.startswith(f"http://{LOOPBACK}:")
