"""``spendgate.core`` decides and never does I/O: a static walk over its imports, proven
to catch a planted one, and a fresh interpreter that imports all of it."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import spendgate.core

CORE = Path(spendgate.core.__file__).parent

#: top-level modules the core must never import: databases, Redis, HTTP clients and
#: servers, web frameworks, networking, processes and the file system
FORBIDDEN = frozenset(
    {
        "sqlalchemy",
        "alembic",
        "asyncpg",
        "aiosqlite",
        "redis",
        "aiohttp",
        "httpx",
        "starlette",
        "fastapi",
        "uvicorn",
        "asyncio",
        "socket",
        "ssl",
        "selectors",
        "os",
        "pathlib",
        "shutil",
        "tempfile",
        "subprocess",
        "multiprocessing",
        "urllib",
        "http",
        "requests",
        "sqlite3",
    }
)
#: builtins that open files
FORBIDDEN_CALLS = frozenset({"open"})


def violations(source: str, module: str) -> list[str]:
    """What in ``source`` (the text of ``module``) breaks the core's rules."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = module.rsplit(".", node.level)[0]
                names = [f"{base}.{node.module}" if node.module else base]
            else:
                names = [node.module or ""]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_CALLS
        ):
            found.append(f"{module}:{node.lineno} calls {node.func.id}()")
        for name in names:
            top = name.split(".")[0]
            if top in FORBIDDEN:
                found.append(f"{module}:{node.lineno} imports {name}")
            elif top == "spendgate" and not (
                name == "spendgate.core" or name.startswith("spendgate.core.")
            ):
                found.append(f"{module}:{node.lineno} imports {name} (outside spendgate.core)")
    return found


def core_modules() -> list[tuple[str, Path]]:
    return [
        (f"spendgate.core.{info.name}", CORE / f"{info.name}.py")
        for info in pkgutil.iter_modules([str(CORE)])
    ]


def test_the_core_has_the_decision_modules() -> None:
    """The walk below covers something: the modules the architecture puts in the core."""
    names = {name.rsplit(".", 1)[1] for name, _ in core_modules()}
    assert {
        "money",
        "clock",
        "budget_windows",
        "budget_rules",
        "pricing",
        "usage",
        "access",
        "audit_chain",
        "forecasting",
        "rate_rules",
    } <= names


@pytest.mark.parametrize(("module", "path"), core_modules(), ids=lambda v: str(v))
def test_core_module_does_no_io(module: str, path: Path) -> None:
    """No database, Redis, network, file or web-framework import, and nothing of spendgate
    outside ``spendgate.core``."""
    assert violations(path.read_text(), module) == []


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        ("import sqlalchemy as sa", "imports sqlalchemy"),
        ("from redis.asyncio import Redis", "imports redis.asyncio"),
        ("import asyncio", "imports asyncio"),
        ("from pathlib import Path", "imports pathlib"),
        ("import os.path", "imports os.path"),
        ("from spendgate.store import schema", "outside spendgate.core"),
        ("from ..errors import ConfigError", "outside spendgate.core"),
        ("from spendgate import errors", "outside spendgate.core"),
        ("def load():\n    return open('x').read()", "calls open()"),
    ],
)
def test_a_planted_import_is_caught(planted: str, expected: str) -> None:
    """The check fails on a synthetic core module with one forbidden line added to a
    clean one, and passes on the clean one."""
    clean = "from decimal import Decimal\n\nfrom spendgate.core.money import format_usd\n"
    assert violations(clean, "spendgate.core.synthetic") == []
    found = violations(clean + planted + "\n", "spendgate.core.synthetic")
    assert len(found) == 1 and expected in found[0], found


def test_importing_the_whole_core_loads_no_io_library() -> None:
    """In a fresh interpreter, importing every core module pulls in no database, Redis,
    HTTP or web framework library, not even indirectly. (``socket`` is left out:
    genai-prices → pydantic → importlib.metadata → email.utils imports it, connecting to
    nothing.)"""
    modules = ", ".join(name for name, _ in core_modules())
    io = sorted(
        {
            "sqlalchemy",
            "asyncpg",
            "aiosqlite",
            "redis",
            "aiohttp",
            "httpx",
            "starlette",
            "fastapi",
            "uvicorn",
        }
    )
    code = (
        f"import sys; import {modules}; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {io!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
