"""The layer order is enforced: `lint-imports` checks the import-linter contracts in pyproject.toml
(lower layers never import higher ones, imports inside functions included; the base modules import no
layer), and the contract states the same order as docs/architecture.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_MODULES = ["errors", "config", "io", "registry", "neurons", "data", "runformat"]


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_import_contracts_are_kept():
    # lint this checkout's src/, not whatever copy of the package is installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert "No module named 'importlinter'" not in out, "install import-linter: pip install -r requirements/ci.txt"
    print(out)
    assert proc.returncode == 0, f"import contracts broken (pyproject.toml [tool.importlinter]):\n{out[-6000:]}"
    assert re.search(r"Contracts: 2 kept, 0 broken", out), out


def test_contract_states_the_documented_order():
    doc = " ".join((REPO / "docs" / "architecture.md").read_text().split())
    documented = re.search(r"`(models(?: → \w+)+)`", doc).group(1).split(" → ")
    contracts = _contracts()
    assert contracts["layers"]["layers"] == documented[::-1]  # import-linter lists the highest layer first
    assert contracts["layers"]["exhaustive"] is True
    assert sorted(contracts["layers"]["exhaustive_ignores"]) == sorted(BASE_MODULES)
    assert contracts["base"]["source_modules"] == [f"safeneurons.{m}" for m in BASE_MODULES]
    assert contracts["base"]["forbidden_modules"] == [f"safeneurons.{layer}" for layer in documented]
