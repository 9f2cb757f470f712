"""What ``pip install -e '.[test,dev]'`` (``scripts/test.sh``) brings: every third-party
module the tests import is a declared dependency, not one that happens to come along
with another (``tests/conftest.py`` patches httpx2's own transports: the SDKs' HTTP
client today, but openai at the ``>=1.50`` the extras allow speaks httpx). And what
``pip install .`` brings: every third-party module ``spendgate`` itself imports is a
runtime dependency (``[project].dependencies``), not one of the extras."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Mapping
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _declared(*extras: str) -> set[str]:
    """The distributions ``[project].dependencies`` and the extras named declare."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    requirements = [*project["dependencies"], *(r for e in extras for r in optional[e])]
    return {_normal(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported(root: Path) -> dict[str, set[str]]:
    """Top-level module → the files importing it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def _undeclared(imported: dict[str, set[str]], declared: set[str]) -> dict[str, list[str]]:
    """The third-party modules imported that no declared distribution provides."""
    providers = _providers()
    return {
        module: sorted(files)
        for module, files in imported.items()
        if module not in sys.stdlib_module_names
        and module not in ("spendgate", "tests")
        and not declared & {_normal(d) for d in providers.get(module, [])}
    }


@cache
def _providers() -> Mapping[str, list[str]]:
    return packages_distributions()


def test_every_module_the_tests_import_is_declared() -> None:
    undeclared = _undeclared(_imported(ROOT / "tests"), _declared("test", "dev"))
    assert not undeclared, undeclared


def test_every_module_spendgate_imports_is_a_runtime_dependency() -> None:
    """``spendgate/`` needs only ``pip install .``; ``spendgate/testing/`` (the fake
    upstream and the console demo that ``scripts/`` and ``bench/`` drive with the openai
    SDK) may also use the test extras."""
    imported = _imported(ROOT / "spendgate")
    testing = _imported(ROOT / "spendgate" / "testing")
    runtime = {
        module: files - {f for f in files if f.startswith("spendgate/testing/")}
        for module, files in imported.items()
    }
    undeclared = _undeclared({m: f for m, f in runtime.items() if f}, _declared())
    assert not undeclared, undeclared
    undeclared = _undeclared(testing, _declared("test"))
    assert not undeclared, undeclared
