"""The fast part of ``make reliability`` that runs in ``make test`` (issue 16): a short network fuzz
against a real ``tpemu start`` process (zero tracebacks, no descriptor left behind) and a short
fuzz of every ``tpemu.wire`` parser through the same target the atheris run uses."""

from __future__ import annotations

from pathlib import Path

from bench.reliability import netfuzz, wirefuzz


def test_network_fuzz_leaves_no_traceback_and_no_socket(tmp_path: Path) -> None:
    result = netfuzz.run(600, concurrency=50, settle=12.0, folder=tmp_path)
    assert result["tracebacks"] == 0, Path(result["log"]).read_text()[-4000:]
    assert result["socket_growth"] <= 0 and result["fd_growth"] <= 0, result
    assert result["client_outcomes"]["connect_failed"] == 0


def test_every_wire_parser_takes_mutated_captures() -> None:
    result = wirefuzz.run_hypothesis(3000)
    assert all(n > 0 for n in result["per_parser"].values()), result
