"""Fixtures of the wire-contract tests: Go peers built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.wirecontract.gobuild import build


@pytest.fixture(scope="session")
def go_peer(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    out = tmp_path_factory.mktemp("go-peers")
    built: dict[str, Path] = {}

    def get(name: str, needs_x_crypto: bool = False) -> Path:
        if name not in built:
            built[name] = build(name, out, needs_x_crypto)
        return built[name]

    return get
