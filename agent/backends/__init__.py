"""Emulated database servers (Postgres, MySQL, MongoDB, Redis) that unmodified clients can use."""
