"""The README's marked examples, run in order against a real `spendgate serve --demo`
with the CLI, curl and the openai/anthropic SDKs (``spendgate.testing.readme_check``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spendgate.testing.readme_check import MARKER, ReadmeCheckFailed, check, marked_blocks

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_examples_work_as_written() -> None:
    """Every marked block runs and every command exits 0: the SDK snippets, the raw
    stream read for its cost comment, the first setup (orgs, teams, users, agents, keys
    with the demo's models and a future expiry), bootstrap reusing the org made before
    it, budgets, exceptions, wallets, rate limits, audit and forecasts."""
    blocks = marked_blocks(README.read_text())
    assert [b.language for b in blocks].count("python") == 3
    outcomes = check(README)
    assert all(o.ok for o in outcomes)
    ran = [o.command for o in outcomes]
    assert len(ran) >= 35
    for expected in (
        "spendgate orgs create acme",
        "spendgate bootstrap --org acme --email admin@acme.io",
        "spendgate wallets close wallet_",
        "spendgate forecast budget_",
        "curl -H",
    ):
        assert any(command.startswith(expected) for command in ran), expected


def test_a_failing_example_is_reported_with_its_line(tmp_path: Path) -> None:
    """The check is not a rubber stamp: a key limited to a model the demo does not serve
    (the README's old example) fails, naming its README line and the gateway's answer."""
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n"
        f"{MARKER}\n"
        "```bash\n"
        "export SPENDGATE_MASTER_KEY=…\n"
        "spendgate orgs create acme\n"
        "spendgate keys create k --org org_… --models gpt-4o-mini\n"
        "```\n"
    )
    with pytest.raises(ReadmeCheckFailed) as failed:
        check(readme)
    message = str(failed.value)
    assert message.startswith("README line 7: spendgate keys create k --org org_")
    assert "422" in message and "gpt-4o-mini" in message


def test_every_toml_block_of_the_readme_loads(tmp_path: Path) -> None:
    """Each config the README shows is one a reader can start with: it loads as it is
    (provider keys named by ``api_key_env`` set), so no model names a provider the
    block does not configure."""
    import re
    import tomllib

    from spendgate.settings import load_settings, unknown_config_keys

    blocks = re.findall(r"^( *)```toml\n(.*?)^\1```", README.read_text(), re.S | re.M)
    assert len(blocks) >= 4
    for n, (indent, body) in enumerate(blocks):
        text = "\n".join(line[len(indent) :] for line in body.splitlines())
        env = {
            provider["api_key_env"]: "set"
            for provider in tomllib.loads(text).get("providers", {}).values()
            if "api_key_env" in provider
        }
        path = tmp_path / f"block{n}.toml"
        path.write_text(text)
        load_settings(config_path=str(path), env=env)
        assert unknown_config_keys(str(path)) == [], text  # serve would warn about them


def test_the_quickstart_installs_what_its_snippets_import() -> None:
    """The Quickstart's install (`pip install -e .`) does not bring the openai and
    anthropic SDKs its snippets import, and it did not say to install them: a reader
    following it got ModuleNotFoundError. Every module a marked snippet imports is the
    standard library's, one of spendgate's own dependencies, or named in a `pip install`
    of the Quickstart."""
    import ast
    import re
    import sys
    import tomllib

    text = README.read_text()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    installed = {
        name.lower()
        for line in re.findall(r"pip install ([\w .\-\[\],]+)", quickstart)
        for name in line.split()
        if not name.startswith(("-", "."))
    }
    project = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]
    installed |= {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    for block in marked_blocks(text):
        if block.language != "python":
            continue
        for node in ast.walk(ast.parse(block.text)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in installed, (block.line, top)
