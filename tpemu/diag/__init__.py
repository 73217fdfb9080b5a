"""Diagnostics on ``teleport.diag_addr``: Prometheus ``/metrics``, ``/healthz``, ``/readyz`` (in
Teleport's JSON shape), and the live routing page (``/routing``), for one tpemu process.

:class:`~tpemu.diag.server.DiagServer` serves them; :mod:`tpemu.diag.metrics` turns the plain
counters of the running services into the exposition at scrape time; :mod:`tpemu.diag.feed`
carries routing decisions to the page and to the JSON-lines trace file.
"""
