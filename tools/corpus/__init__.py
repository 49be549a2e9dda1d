"""Offline, deterministic demo corpus built from openly licensed image collections."""
