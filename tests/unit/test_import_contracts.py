"""The dependency rule of DESIGN.md as import-linter contracts (pyproject.toml).

`make lint` checks the tree as it is; these tests show the contracts bite: a tree with
one forbidden import, built beside the real one in a temporary folder of symlinks, breaks
the contract that names it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGE_FOLDERS = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (make setup)")


def _tree(tmp_path: Path, extra: dict[str, str] | None = None) -> Path:
    """modelchain/<folder> for every package folder (symlinks), tests/, and ``extra`` files
    (``"core/x.py": source``) added to a folder that is then copied as symlinks file by file."""
    extra = extra or {}
    changed = {name.split("/")[0] for name in extra}
    package = tmp_path / "modelchain"
    package.mkdir()
    for folder in PACKAGE_FOLDERS:
        if folder not in changed:
            (package / folder).symlink_to(ROOT / folder)
            continue
        for source in (ROOT / folder).rglob("*.py"):
            target = package / folder / source.relative_to(ROOT / folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
    for name, text in extra.items():
        (package / name).write_text(text)
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract(tmp_path):
    result = _lint(_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("extra", "contract"),
    [
        ({"core/_upward.py": "import modelchain.pipelines.build\n"}, "pipelines -> components"),
        ({"eval/_kfp.py": "import kfp.dsl\n"}, "never import kfp"),
        ({"components/chunk/_sibling.py": "import modelchain.components.discover.logic\n"},
         "no component imports a sibling component"),
        ({"bench/_tests.py": "import tests.tiny_model\n"}, "bench does not import the tests"),
    ],
    ids=["core-imports-pipelines", "eval-imports-kfp", "component-imports-sibling", "bench-imports-tests"],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, extra, contract):
    result = _lint(_tree(tmp_path, extra))
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.rstrip().endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout
