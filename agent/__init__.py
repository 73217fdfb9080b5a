"""Agents (installed as ``tpemu.agent``): join, reverse tunnels, SSH and database services."""
