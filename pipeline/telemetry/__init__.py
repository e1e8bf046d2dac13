"""Telemetry: CCSDS space packets of a Gaia-like mission, their codec and the per-pass delivery files.

The byte layouts are documented in docs/telemetry.md.
"""

import os as _os
import tempfile as _tempfile
from pathlib import Path as _Path


def _ccsdspy_configdir() -> str:
    """ccsdspy logs its import at INFO unless configured otherwise, and insists that its configuration
    directory be writable: the shipped one where it is (a development checkout), else a copy in a directory
    of the user's own (an installed, root-owned package run by a service user)."""
    shipped = _Path(__file__).parent / "ccsdspy_config"
    if _os.access(shipped, _os.W_OK):
        return str(shipped)
    config = (shipped / "config.yml").read_bytes()
    for base in (_os.environ.get("XDG_CACHE_HOME"), _Path.home() / ".cache", _tempfile.gettempdir()):
        if not base:
            continue
        copy = _Path(base) / f"soc-pipeline-ccsdspy-{_os.getuid()}"
        try:
            copy.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not (copy / "config.yml").exists() or (copy / "config.yml").read_bytes() != config:
                (copy / "config.yml").write_bytes(config)
        except OSError:
            continue
        if _os.access(copy, _os.W_OK):
            return str(copy)
    return str(shipped)


# A user's own configuration still wins.
if "ccsdspy_CONFIGDIR" not in _os.environ:
    _os.environ["ccsdspy_CONFIGDIR"] = _ccsdspy_configdir()
