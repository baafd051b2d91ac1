"""The import rules in pyproject.toml (import-linter) hold for the tree, and catch a wrong import:
a copy of the tree where runtime imports an operator command fails `lint-imports`."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LINT_SECONDS_MAX = 120


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # The tree's own packages come first on the path, ahead of the installed (editable) ones.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=LINT_SECONDS_MAX
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for package in ("services", "contracts"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_rule(tree_copy: Path):
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "broken_rule"),
    [
        ("services/runtime/uow.py", "import services.ops.common", "runtime imports only contracts BROKEN"),
        ("services/travel/handlers.py", "import services.disbursement.domain",
         "The services are independent of each other BROKEN"),
        ("services/ops/dlq.py", "import services.ops.ledger",
         "Operator commands share helpers via ops.common, not each other BROKEN"),
        ("services/disbursement/adapters/callbacks.py", "import services.disbursement.handlers",
         "In a service, app > handlers > adapters: adapters never import handlers BROKEN"),
    ],
)  # fmt: skip
def test_a_wrong_import_breaks_its_rule(tree_copy: Path, module: str, wrong_import: str, broken_rule: str):
    with (tree_copy / module).open("a") as source:
        source.write(f"\n{wrong_import}  # a deliberate violation\n")
    result = lint_imports(tree_copy)
    assert result.returncode == 1, result.stdout
    assert broken_rule in result.stdout
