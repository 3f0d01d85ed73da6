"""Simulated store devices that speak the real byte protocols, for tests and ``make run``."""
