"""Simulator of a day of telemetry: scanning law, sky model, transits (see docs/simulator.md)."""
