"""The client side (like tsh): login, profile, ssh, database tunnels."""
