"""The asyncio kit shared by the services (glue): sockets, splicing, TLS contexts, HTTP over h11.

This is the only shared code that awaits; the protocols themselves live in :mod:`tpemu.wire`.
"""
