"""What ``pip install -e '.[test,dev]'`` (``scripts/test.sh``) brings: every third-party
module the tests import is a declared dependency, not one that happens to come along
with another (``tests/conftest.py`` patches httpx2's own transports: the SDKs' HTTP
client today, but openai at the ``>=1.50`` the extras allow speaks httpx)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [*project["dependencies"], *extras["test"], *extras["dev"]]
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


def test_every_module_the_tests_import_is_declared() -> None:
    declared = _declared()
    providers = packages_distributions()
    undeclared = {
        module: sorted(files)
        for module, files in _imported(ROOT / "tests").items()
        if module not in sys.stdlib_module_names
        and module not in ("spendgate", "tests")
        and not declared & {_normal(d) for d in providers.get(module, [])}
    }
    assert not undeclared, undeclared
