"""Helpers every dashboard page shares (cached reads, states, formats)."""
