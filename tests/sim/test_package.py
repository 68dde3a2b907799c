"""The package's public surface: a sorted ``__all__`` everywhere, nothing of the project."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import sim

PROJECT_PACKAGES = {"reelfeed", "online_model", "state", "stream", "server", "release"}
MODULES = sorted(
    f"sim.{info.name}" for info in pkgutil.iter_modules(sim.__path__) if info.name != "__main__"
)


@pytest.mark.parametrize("name", ["sim", *MODULES])
def test_every_module_has_a_sorted_all_of_existing_names(name: str) -> None:
    module = importlib.import_module(name)
    names = module.__all__
    assert names == sorted(names)
    assert all(hasattr(module, item) for item in names)


def test_sim_imports_only_the_standard_library_and_third_party_packages() -> None:
    for path in sorted(Path(sim.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for imported in names:
                assert imported.split(".")[0] not in PROJECT_PACKAGES, (path.name, imported)


def test_the_package_is_typed() -> None:
    assert (Path(sim.__file__).parent / "py.typed").is_file()
