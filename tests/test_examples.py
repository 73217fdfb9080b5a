"""The example projects under examples/ pass, run the way their users run them (their own pytest
config, the plugin loaded from tpemu's ``pytest11`` entry point, no pytest-asyncio)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_pytest_plugin_example() -> None:
    project = ROOT / "examples" / "pytest-plugin"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:asyncio", "-p", "no:cacheprovider"],
                            cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
