"""In-process emulated database servers (Postgres, MySQL, Redis) that unmodified clients can use.

They serve ``uri: emulated`` databases, and ``embedded`` ones whose real engine is not installed
(:mod:`tpemu.agent.engines`). MongoDB has no emulator here: nx-27017, a dependency of tpemu,
serves both.
"""
