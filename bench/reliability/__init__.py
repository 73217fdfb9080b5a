"""tpemu's reliability suite (``make reliability``): fuzzers, load, faults, with figures.

* :mod:`bench.reliability.wirefuzz` — coverage-guided fuzz (atheris/libFuzzer) of every
  ``tpemu.wire`` parser: each may return a value, ``None`` or raise ``WireError``, nothing else.
* :mod:`bench.reliability.netfuzz` — a network fuzzer against a real ``tpemu start`` process:
  mutated real captures of every sniffed protocol and route, then the process's tracebacks,
  descriptors, RSS and connections left open; also the mixed 50,000-connection run.
* :mod:`bench.reliability.load` — slowloris beyond ``max_pending`` with good clients measured,
  10,000 idle routed connections with traffic and checksums, 50 x 20 MiB both ways.
* :mod:`bench.reliability.run` — runs them all, bounded, and writes ``bench/results/reliability.json``.
"""
