"""Test-only plugins for appion (see ../README.md)."""
