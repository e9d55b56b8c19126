"""Proof: the exactness oracle (with its float64 fallback) and fidelity on held-out data."""
