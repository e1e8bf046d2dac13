"""Telemetry: CCSDS space packets of a Gaia-like mission, their codec and the per-pass delivery files.

The byte layouts are documented in docs/telemetry.md.
"""

import os as _os
from pathlib import Path as _Path

# ccsdspy logs its import at INFO unless configured otherwise; a user's own configuration still wins.
_os.environ.setdefault("ccsdspy_CONFIGDIR", str(_Path(__file__).parent / "ccsdspy_config"))
