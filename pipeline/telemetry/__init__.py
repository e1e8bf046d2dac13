"""Telemetry: CCSDS space packets of a Gaia-like mission, their codec and the per-pass delivery files.

The byte layouts are documented in docs/telemetry.md.
"""
