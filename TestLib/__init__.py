"""Test library: float64 reference, gradient checker, unittest runner and the pytest suite."""
