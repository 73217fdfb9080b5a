"""Toxic descriptions (toxiproxy's JSON shape): valid ones parse, bad ones name the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpemu.faults.toxics import TYPES, Toxic, ToxicError, parse_toxic, update_toxic


def test_defaults_follow_toxiproxy() -> None:
    t = parse_toxic({"type": "latency", "attributes": {"latency": 100}})
    assert t.to_json() == {"name": "latency_downstream", "type": "latency", "stream": "downstream",
                           "toxicity": 1.0, "attributes": {"latency": 100, "jitter": 0}}
    assert parse_toxic({"type": "limit_data", "stream": "upstream"}).name == "limit_data_upstream"


@pytest.mark.parametrize(("body", "fragment"), [
    ({"type": "nope"}, "invalid toxic type"),
    ({"type": "latency", "stream": "sideways"}, "stream must be"),
    ({"type": "latency", "toxicity": 2}, "toxicity"),
    ({"type": "latency", "attributes": {"rate": 1}}, "unknown attribute 'rate'"),
    ({"type": "bandwidth", "attributes": {"rate": -1}}, "attribute rate"),
    ({"type": "slicer", "attributes": []}, "attributes must be an object"),
    ([], "JSON object"),
])
def test_errors_name_the_field(body: Any, fragment: str) -> None:
    with pytest.raises(ToxicError, match=fragment):
        parse_toxic(body)


def test_update_keeps_type_and_stream() -> None:
    t = parse_toxic({"type": "bandwidth", "stream": "upstream", "attributes": {"rate": 10}})
    u = update_toxic(t, {"attributes": {"rate": 20}, "toxicity": 0.5})
    assert (u.type, u.stream, u.attributes, u.toxicity) == ("bandwidth", "upstream", {"rate": 20}, 0.5)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["type", "stream", "toxicity", "name", "attributes", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                                 st.sampled_from(list(TYPES)), st.dictionaries(st.text(max_size=8), st.integers()))))
def test_fuzz_parse_returns_a_toxic_or_a_toxic_error(body: dict[str, Any]) -> None:
    try:
        assert isinstance(parse_toxic(body), Toxic)
    except ToxicError:
        pass
