"""The packaging and import rules of shared/DESIGN.md §2.

* every folder with an ``__init__.py`` under tpemu/, proxy/, agent/, auth/ is listed in
  pyproject.toml's packages (a missing one silently drops out of the wheel), mapped by
  ``package-dir`` onto the ``tpemu`` import root;
* ``tpemu.wire`` imports nothing outside itself and no asyncio/socket/logging;
* ``proxy``, ``agent`` and ``auth`` never import each other (they talk over the network);
* nothing imports the bare folder names ``proxy``/``agent``/``auth``.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"tpemu": "tpemu", "proxy": "tpemu.proxy", "agent": "tpemu.agent", "auth": "tpemu.auth"}
SERVICES = ("tpemu.proxy", "tpemu.agent", "tpemu.auth")


def _pyproject() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _packages_in_tree() -> set[str]:
    found = set()
    for folder, root_name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([root_name, *rel.parts]) if rel.parts else root_name)
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for folder, root_name in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([root_name, *parts]), path))
    return out


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_every_package_is_listed_for_the_wheel() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]  # type: ignore[index]
    listed = set(setuptools["packages"])
    tree = _packages_in_tree()
    assert tree - listed == set(), "packages missing from pyproject.toml [tool.setuptools] packages"
    assert listed - tree == set(), "pyproject.toml lists packages that do not exist"
    assert setuptools["package-dir"] == {"tpemu": "tpemu", "tpemu.proxy": "proxy", "tpemu.agent": "agent",
                                         "tpemu.auth": "auth"}


def test_wire_imports_nothing_outside_itself() -> None:
    banned = {"asyncio", "socket", "logging", "ssl", "selectors"}
    for name, path in _modules():
        if not name.startswith("tpemu.wire"):
            continue
        for imp in _imports(path):
            top = imp.split(".")[0]
            assert top not in banned, f"{path}: tpemu.wire must not import {imp}"
            if top == "tpemu":
                # tpemu.errors: the one error root (PeerFault for a peer's bad bytes), a leaf.
                assert imp.startswith(("tpemu.wire", "tpemu.errors")), f"{path}: tpemu.wire imports {imp}"


def test_the_error_root_is_a_leaf() -> None:
    # tpemu.wire may import tpemu.errors, so at module level it imports no tpemu module and nothing
    # tpemu.wire may not (describe() imports what it needs when it runs).
    path = Path(__file__).resolve().parents[1] / "tpemu" / "errors.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert all(n in ("__future__", "typing") for n in names), ast.dump(node)


@pytest.mark.parametrize("service", SERVICES)
def test_services_do_not_import_each_other(service: str) -> None:
    others = [s for s in SERVICES if s != service]
    for name, path in _modules():
        if not name.startswith(service):
            continue
        for imp in _imports(path):
            for other in others:
                assert not (imp == other or imp.startswith(other + ".")), f"{path}: {service} imports {imp}"


def test_no_bare_service_imports() -> None:
    for _, path in _modules() + [(p.stem, p) for p in ROOT.glob("tests/**/*.py")] + \
            [(p.stem, p) for p in ROOT.glob("bench/**/*.py")]:
        for imp in _imports(path):
            assert imp.split(".")[0] not in ("proxy", "agent", "auth"), f"{path}: bare import {imp}"


def test_installed_package_maps_service_folders() -> None:
    import tpemu.agent
    import tpemu.auth
    import tpemu.proxy

    for mod, folder in ((tpemu.proxy, "proxy"), (tpemu.agent, "agent"), (tpemu.auth, "auth")):
        assert mod.__file__ is not None
        assert Path(mod.__file__).resolve() == (ROOT / folder / "__init__.py").resolve()
    assert "tpemu" in sys.modules
