"""Shared fixtures: a real throwaway PostgreSQL 15 server, migrated template databases, simulated days."""

from __future__ import annotations

import itertools
from pathlib import Path

import psycopg
import pytest

from pipeline.db import migrate
from pipeline.db.server import THROWAWAY_SETTINGS, LocalServer
from pipeline.simulate.run import SimConfig, simulate

ALL_FAULTS = ("gap", "duplicate", "bitflip", "truncate", "repeat_pass")
ALL_ANOMALIES = ("temperature_excursion", "focus_drift", "bias_jump")
_db_names = itertools.count()


def migrated_database(server: LocalServer, name: str, settings: dict) -> str:
    """A fresh database NAME on the server (dropped first if there), migrated with these soc_settings."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    migrate.init(server.dsn(name), settings)
    return server.dsn(name)


@pytest.fixture(scope="session")
def pg_server():
    server = LocalServer(settings=THROWAWAY_SETTINGS).start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def pg_template(pg_server):
    """A migrated database to copy: CREATE DATABASE ... TEMPLATE is much faster than migrating again."""
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE soc_template")
    migrate.init(pg_server.dsn("soc_template"), {"chunk_seconds": 1800, "healpix_order": 2})
    return "soc_template"


@pytest.fixture
def new_db(pg_server, pg_template):
    """A factory of fresh, migrated databases; returns DSNs."""

    def make() -> str:
        name = f"soc_test_{next(_db_names)}"
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
        return pg_server.dsn(name)

    return make


@pytest.fixture(scope="session")
def faulty_day(tmp_path_factory) -> Path:
    """One small simulated day with every fault and anomaly, a tight downlink (backlog across passes)."""
    out = tmp_path_factory.mktemp("faulty-day")
    simulate(out, SimConfig(start="2016-08-01", days=1.0, scale=0.0003, seed=11, progress=False,
                            faults=ALL_FAULTS, anomalies=ALL_ANOMALIES, downlink_margin=0.6))  # fmt: skip
    return out


def pytest_ignore_collect(collection_path, config):
    """tests/infra checks a provisioned topology: collected only when given hosts (`make infra`)."""
    if collection_path.name == "infra" and collection_path.parent == Path(__file__).parent:
        return not config.getoption("hosts", None)
    return None
