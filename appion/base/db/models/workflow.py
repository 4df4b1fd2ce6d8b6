"""Appion-side tables for the workflow subsystem (filled in by that subsystem)."""
__all__: list[str] = []
