"""Photometric science alerts (issue 5).

Science (pure numpy): history (the inputs), stats (per-source statistics), thresholds (+ thresholds.yaml),
detect (the detectors and `evaluate`), filters (the named rejection filters); real Gaia data:
gaia_lightcurves (loaders) and realdata (visit-by-visit replay and its report). Operations (database
scan, runs, candidates, names, publication): see docs/alerts-operations.md.
"""
