"""Mixing rules and the signals they consume (numpy/scipy only)."""
