"""Mixing rules and the signals they consume (numpy/scipy; torch for gradient features and impact terms)."""
