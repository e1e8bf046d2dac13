"""soc-pipeline: the daily data pipeline of a Gaia-like Science Operations Centre."""

__version__ = "0.1.0"
