"""The configuration file: where the pipeline writes, where it reads, where telemetry lands and products go.

YAML, found at --config, else $SOC_CONFIG, else /etc/soc/soc.yaml if it exists:

    database:
      write_dsn: "host=db-primary dbname=soc user=soc_pipeline"   # the primary: every write goes here
      read_dsn:  "host=db-replica dbname=soc user=soc_pipeline"   # a replica serves reads (default: write)
    landing: /srv/soc/landing      # where deliveries arrive (soc ingest --watch)
    outbox: /srv/soc/outbox        # where downstream chunk products go

$SOC_WRITE_DSN and $SOC_READ_DSN override the file; a command's --dsn overrides both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_PATH = Path("/etc/soc/soc.yaml")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    write_dsn: str | None = None
    read_dsn: str | None = None
    landing: Path | None = None
    outbox: Path | None = None

    @property
    def reads(self) -> str | None:
        return self.read_dsn or self.write_dsn


def load(path: str | Path | None = None) -> Config:
    path = path or os.environ.get("SOC_CONFIG") or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    data: dict = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"configuration {path}: {exc}") from exc
        unknown = set(data) - {"database", "landing", "outbox"}
        if unknown or not isinstance(data.get("database", {}), dict):
            raise ConfigError(
                f"configuration {path}: unknown or malformed keys {sorted(unknown) or ['database']}"
            )
    db = data.get("database", {})
    return Config(
        write_dsn=os.environ.get("SOC_WRITE_DSN") or db.get("write_dsn"),
        read_dsn=os.environ.get("SOC_READ_DSN") or db.get("read_dsn"),
        landing=Path(data["landing"]) if data.get("landing") else None,
        outbox=Path(data["outbox"]) if data.get("outbox") else None,
    )
