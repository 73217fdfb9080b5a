"""Build the Go peers under ``tests/go/`` offline (Debian's golang-go, GOPATH mode from
/usr/share/gocode for golang.org/x/crypto/ssh), into a test's tmp dir; skip with the reason when
the toolchain or the library is absent (``tools/test-deps.d/teleport-go-peer.apt`` installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GO_SRC = Path(__file__).resolve().parent.parent / "go"
GOPATH = Path("/usr/share/gocode")


def go_binary() -> str:
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if Path("/usr/lib/go/bin/go").exists() else None)
    if go is None:
        pytest.skip("the Go toolchain is not installed (Debian golang-go; tools/test-deps.d/teleport-go-peer.apt)")
    return go


def build(name: str, out_dir: Path, needs_x_crypto: bool = False) -> Path:
    """``go build`` of ``tests/go/<name>`` into ``out_dir``; the binary's path."""
    go = go_binary()
    if needs_x_crypto and not (GOPATH / "src/golang.org/x/crypto/ssh").is_dir():
        pytest.skip("golang.org/x/crypto/ssh is not installed (Debian golang-golang-x-crypto-dev)")
    out = out_dir / name
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOCACHE": str(out_dir / "gocache"),
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    proc = subprocess.run([go, "build", "-o", str(out), "."], cwd=GO_SRC / name, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"go build {name} failed:\n{proc.stderr}"
    return out
