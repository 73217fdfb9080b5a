"""The cost-growth bench (bench/growth.py) and the before/after builds bench (bench/builds.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import builds, growth, split


def test_growth_smoke_against_haproxy_split_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a (pretended) limit that holds 100 connections per process: 150 run over two HAProxy
    processes on one port, the smaller counts once at one process (series ``fit``) and once at
    two (``same``); a count that would need more than 64 processes is left out with the reason."""
    if subprocess.run(["sh", "-c", "command -v haproxy"], capture_output=True).returncode != 0:
        pytest.skip("haproxy is not installed (make test installs it)")
    monkeypatch.setattr(growth, "fd_limit", lambda: split.SPARE_FDS + 2 * 100)  # 100 connections fit
    result = growth.run_growth("quick", log=lambda _: None, counts=(20, 60, 150, 8000), subjects=("haproxy",))
    fit, same = result["points"]["haproxy"]["fit"], result["points"]["haproxy"]["same"]
    assert set(fit) == set(same) == {"20", "60", "150"}
    assert [fit[c]["processes"] for c in ("20", "60", "150")] == [1, 1, 2]
    assert [same[c]["processes"] for c in ("20", "60", "150")] == [2, 2, 2]
    for points in (fit, same):
        for c, p in points.items():
            assert p["held"] == int(c) and sum(p["held_per_process"]) == int(c), p
            assert len(p["held_per_process"]) == p["processes"] and "problems" not in p
    assert fit["20"]["conn_per_s_vs_first"] == 1.0 and same["150"]["conn_per_s"] > 0
    assert "more than the 64 workers" in result["skipped"]["8000"]
    assert "series same" in growth.table(result)


def test_builds_export_lays_a_revision_out_as_the_installed_package(tmp_path: Path) -> None:
    py = builds.export("HEAD", tmp_path / "tree")
    for inside in ("tpemu/__init__.py", "tpemu/proxy/service.py", "tpemu/agent/tunnel.py", "tpemu/auth/__init__.py"):
        assert (py / inside).is_file(), inside
    assert (tmp_path / "tree" / "src" / "bench" / "peers" / "tpemu.yaml").is_file()
