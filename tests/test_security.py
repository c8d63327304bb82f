"""Security by default, checked on the source and the configs rather than promised in prose."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agents.config import AgentConfig
from agents.graph import pipeline_with
from agents.llm_server import LocalLLMServer
from bus.transport import LOOPBACK, free_tcp_endpoint
from storage.recorder import RecorderConfig

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for p in REPO.rglob("*.py") if not p.is_relative_to(REPO / "tests") and ".git" not in p.parts]


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


def test_no_eval_exec_or_pickle_beyond_the_pinned_mnist_unpickler():
    assert len(SOURCES) > 20
    for path in SOURCES:
        calls, imports = calls_and_imports(path)
        name = path.relative_to(REPO).as_posix()
        assert not {"eval", "exec", "compile"} & calls, f"{name} evaluates code"
        assert not {"torch.load", "pickle.load", "pickle.loads"} & calls, f"{name} loads a pickle"
        if name != "trainer/data.py":  # the sha256-pinned MNIST copy, through a numpy-only unpickler
            assert not {"pickle", "dill", "cloudpickle", "marshal"} & imports, f"{name} imports a pickle module"


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
        AgentConfig(endpoint="tcp://192.168.1.5:5555", recorder_endpoint=recorder.endpoint, run_dir=tmp_path,
                    nodes=pipeline_with([]))  # fmt: skip
    server = LocalLLMServer(tmp_path / "llm.log")
    assert server.host == LOOPBACK and server.base_url.startswith(f"http://{LOOPBACK}:")
