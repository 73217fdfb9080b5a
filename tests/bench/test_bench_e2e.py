"""The end-to-end benchmark's driver (bench/e2e.py): its result shape, medians and table."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from bench import e2e


def test_median_run_picks_the_middle_run_and_keeps_them_all() -> None:
    runs: list[dict[str, Any]] = [{"conn_per_s": 3.0}, {"conn_per_s": 1.0}, {"error": "boom"}, {"conn_per_s": 2.0}]
    chosen = e2e._median_run(runs, "conn_per_s")
    assert chosen["conn_per_s"] == 2.0
    assert chosen["runs"] == [3.0, 1.0, None, 2.0]
    assert chosen["median_of"] == 3
    assert e2e._median_run([{"error": "x"}], "conn_per_s") == {"error": "x"}


def test_unknown_profile_and_subject_are_refused() -> None:
    with pytest.raises(ValueError, match="profile"):
        e2e.run_e2e("huge")
    with pytest.raises(ValueError, match="subject"):
        e2e.run_e2e("smoke", subjects=("direct", "envoy"))


@pytest.mark.slow
@pytest.mark.e2e
def test_smoke_profile_measures_direct_and_haproxy() -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    lines: list[str] = []
    result: dict[str, Any] = e2e.run_e2e("smoke", lines.append, subjects=("direct", "haproxy", "sslh"))
    json.dumps(result)  # JSON-able
    assert set(result) == {"connection_rate", "throughput", "memory", "subjects", "profile"}
    for point in ("c1", "c4"):
        for name in ("direct", "haproxy"):
            entry = result["connection_rate"][point][name]
            assert entry["conn_per_s"] > 0 and entry["errors"] == 0, entry
            assert len(entry["runs"]) == 2
        assert result["connection_rate"][point]["direct"]["vs_direct"] == 1.0
        assert "cpu_us_per_conn" in result["connection_rate"][point]["haproxy"]
    assert result["throughput"]["streams2"]["haproxy"]["mb_per_s"] > 0
    mem = result["memory"]["idle50"]
    assert mem["direct"]["kib_per_conn"] is None
    assert mem["haproxy"]["connections"] == 50
    assert mem["haproxy"]["rss_after_kib"] >= mem["haproxy"]["rss_before_kib"] > 0
    assert result["subjects"]["haproxy"]["skipped"] is None
    assert "tpemu-uvloop" not in result["subjects"]
    assert any(line.startswith("connrate c1 haproxy:") for line in lines)
    table = e2e.format_table(result)
    assert "haproxy" in table and "connection rate" in table
