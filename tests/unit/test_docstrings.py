"""Every public class of the package says what it is for (issue 14).

Reads the source with `ast` (no imports, no processes). The package is the tree of folders with an
`__init__.py` under the package root; `tests/` and the bundled `samples/` are not part of it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import dupwatch

ROOT = Path(dupwatch.__file__).parent
NOT_PACKAGE = {ROOT / "tests", ROOT / "samples"}


def _package_modules(folder: Path) -> list[Path]:
    modules = sorted(folder.glob("*.py"))
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child not in NOT_PACKAGE and (child / "__init__.py").is_file():
            modules += _package_modules(child)
    return modules


def _undocumented_classes(module: Path) -> list[str]:
    tree = ast.parse(module.read_text(), filename=str(module))
    return [f"{module.relative_to(ROOT)}:{node.lineno} {node.name}" for node in tree.body
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_")
            and not ast.get_docstring(node)]


def test_the_walk_covers_the_package_and_not_the_tests() -> None:
    modules = {str(path.relative_to(ROOT)) for path in _package_modules(ROOT)}
    assert {"settings.py", "index/protocol.py", "model/backends/__init__.py"} <= modules
    assert not any(name.startswith(("tests/", "samples/")) for name in modules)


def test_every_public_class_has_a_docstring() -> None:
    missing = [name for module in _package_modules(ROOT) for name in _undocumented_classes(module)]
    assert not missing, f"{len(missing)} public classes without a docstring:\n" + "\n".join(missing)
