"""The dependency map of docs/architecture.md holds and is enforced.

``lint-imports`` checks the contracts in ``pyproject.toml`` (run by ``make check``); these tests
show that it passes on the tree, and fails, naming the contract and the import, once a
forbidden import is written into a scratch copy. Systems and composers import other packages
only through their public names (no ``flywheel.other._private``).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "flywheel"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# Private imports across packages still to remove, each with the helper who owns the file.
KNOWN_PRIVATE_IMPORTS: dict[str, str] = {}


def _lint_imports(src_root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src_root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=src_root.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def scratch_src(tmp_path: Path) -> Path:
    """A copy of the package's Python sources that a test may break."""
    dest = tmp_path / "src"
    shutil.copytree(
        SRC, dest / "flywheel", ignore=shutil.ignore_patterns("__pycache__", "static", "frontend")
    )
    return dest


def test_the_contracts_hold_on_the_tree(scratch_src: Path) -> None:
    done = _lint_imports(scratch_src)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("events/_scratch.py", "import flywheel.features", "Shared ground imports no system"),
        ("serving/_scratch.py", "from flywheel import cli", "No system imports a composer"),
        ("registry/_scratch.py", "import flywheel.serving", "registry imports only tracking"),
        ("features/_scratch.py", "import flywheel.recsys", "No system imports a composer"),
    ],
)
def test_a_forbidden_import_fails_lint_imports(
    scratch_src: Path, module: str, line: str, contract: str
) -> None:
    path = scratch_src / "flywheel" / module
    path.write_text(f'"""A deliberate break of the map."""\n\n{line}  # noqa: F401\n')
    done = _lint_imports(scratch_src)
    assert done.returncode != 0
    out = done.stdout
    broken = out[out.index("Broken contracts") :]
    assert contract in broken
    dotted = "flywheel." + module.removesuffix(".py").replace("/", ".")
    assert dotted in broken, broken


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
    return found


def test_packages_use_each_other_only_through_public_names() -> None:
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative in KNOWN_PRIVATE_IMPORTS:
            continue
        own = relative.split("/")[0].removesuffix(".py")
        for lineno, name in _imports(path):
            parts = name.split(".")
            if len(parts) < 3 or parts[0] != "flywheel" or parts[1].startswith("_"):
                continue
            if parts[1] != own and parts[2].startswith("_"):
                offences.append(f"{relative}:{lineno} imports {name}")
    assert not offences, "\n".join(offences)


def test_known_private_imports_are_still_there() -> None:
    """An allowance that is no longer needed is removed (so the list only shrinks)."""
    for relative in KNOWN_PRIVATE_IMPORTS:
        own = relative.split("/")[0]
        names = [n for _, n in _imports(SRC / relative)]
        assert any(
            n.startswith("flywheel.") and n.split(".")[1] != own and "._" in n for n in names
        ), f"{relative} no longer imports private modules: drop it from KNOWN_PRIVATE_IMPORTS"
