"""The cost-growth bench (bench/growth.py) and the before/after builds bench (bench/builds.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import builds, growth


def test_groups_keep_each_source_under_its_port_range() -> None:
    assert growth._groups(1000) == [1000]
    assert growth._groups(50_000) == [15_000, 15_000, 15_000, 5_000]
    assert sum(growth._groups(31_234)) == 31_234


def test_growth_smoke_against_haproxy_and_a_count_past_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two small counts and one past the (here pretended) descriptor limit: measured at the
    largest count that fits, with the reason; ratios against the smallest count."""
    if subprocess.run(["sh", "-c", "command -v haproxy"], capture_output=True).returncode != 0:
        pytest.skip("haproxy is not installed (make test installs it)")
    monkeypatch.setattr(growth, "fd_limit", lambda: growth.SPARE_FDS + 2 * 100)  # 100 connections fit
    result = growth.run_growth("quick", log=lambda _: None, counts=(20, 60, 5000), subjects=("haproxy",))
    points = result["points"]["haproxy"]
    assert set(points) == {"20", "60", "100"}
    assert [points[c]["held"] for c in ("20", "60", "100")] == [20, 60, 100]
    assert points["20"]["conn_per_s_vs_first"] == 1.0 and points["100"]["conn_per_s"] > 0
    assert "RLIMIT_NOFILE" in result["skipped"]["5000"] and "measured at 100" in result["skipped"]["5000"]


def test_builds_export_lays_a_revision_out_as_the_installed_package(tmp_path: Path) -> None:
    py = builds.export("HEAD", tmp_path / "tree")
    for inside in ("tpemu/__init__.py", "tpemu/proxy/service.py", "tpemu/agent/tunnel.py", "tpemu/auth/__init__.py"):
        assert (py / inside).is_file(), inside
    assert (tmp_path / "tree" / "src" / "bench" / "peers" / "tpemu.yaml").is_file()
