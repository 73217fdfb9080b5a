"""Faults on purpose: toxiproxy-compatible fault proxies and the seed's troubleshooting cases."""
