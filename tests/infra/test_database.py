"""The Main Database servers: up, TLS and scram only, roles and privileges exactly as the data lists say,
a synchronous hot standby that serves reads, and a validation login that cannot write to operations."""

from __future__ import annotations

import re
import secrets

import psycopg
import pytest

from tests.infra.conftest import connect, live_primary, superuser_query


def _only(host, topology, group: str) -> None:
    if host.backend.get_hostname() not in topology.groups[group]:
        pytest.skip(f"not a host of {group}")


def test_db_server_runs_and_listens_on_its_own_address(host, topology):
    _only(host, topology, "db_servers")
    name = host.backend.get_hostname()
    assert host.run(f"pg_ctlcluster 15 {topology.cluster(name)} status").rc == 0
    assert host.socket(f"tcp://{topology.address(name)}:5432").is_listening
    assert host.file(f"{topology.socket_dir(name)}/.s.PGSQL.5432").is_socket


def test_client_authentication_is_tls_and_scram_only(host, topology):
    _only(host, topology, "db_servers")
    name = host.backend.get_hostname()
    hba = host.file(f"{topology.var(name, 'postgresql_conf_dir')}/pg_hba.conf").content_string
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert ["local", "all", "postgres", "peer"] in rules
    for rule in rules:
        assert rule[0] == "local" or (rule[0] == "hostssl" and rule[-1] == "scram-sha-256"), rule
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        connect(topology, name, "soc_alerts", sslmode="disable")


def test_the_standby_is_synchronous_and_streaming(topology):
    primary = live_primary(topology)
    rows = superuser_query(
        topology, primary, "SELECT application_name, state, sync_state FROM pg_stat_replication"
    )
    standbys = [h.replace("-", "_") for h in topology.groups["db_servers"] if h != primary]
    assert sorted(rows) == sorted([name, "streaming", "sync"] for name in standbys)


def test_reads_are_served_by_the_standby_and_it_refuses_writes(topology):
    standby = next(h for h in topology.groups["db_servers"] if h != live_primary(topology))
    with connect(topology, standby, "soc_alerts") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] > 0
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TEMP TABLE t (x int)")


def test_login_roles_are_exactly_the_specified_ones(topology):
    primary = live_primary(topology)
    users = {u["name"]: u for u in topology.var(primary, "postgresql_users")}
    rows = superuser_query(
        topology, primary,
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls"
        " FROM pg_roles WHERE rolcanlogin ORDER BY 1",
    )  # fmt: skip
    assert {r[0] for r in rows} == set(users) | {"postgres"}
    for name, sup, createdb, createrole, repl, bypass in rows:
        if name == "postgres":
            continue
        flags = users[name]["role_attr_flags"].split(",")
        assert sup == "f" and createdb == "f" and createrole == "f" and bypass == "f", name
        assert (repl == "t") == ("REPLICATION" in flags), name
    stored = superuser_query(
        topology, primary, "SELECT usename, passwd FROM pg_shadow WHERE usename <> 'postgres'"
    )
    assert stored and all(p.startswith("SCRAM-SHA-256$") for _, p in stored)


def test_database_privileges_are_exactly_the_specified_ones(topology):
    primary = live_primary(topology)
    connect_roles = set(topology.var(primary, "postgresql_connect_roles"))
    acl = superuser_query(
        topology, primary,
        "SELECT coalesce(nullif(a.grantee::regrole::text, '-'), 'PUBLIC'), a.privilege_type"
        " FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = 'soc'",
    )  # fmt: skip
    grants = {(g, p) for g, p in acl}
    assert {g for g, p in grants if p == "CONNECT"} == connect_roles
    assert not {g for g, _ in grants} & {"PUBLIC", "0"}
    readers = superuser_query(
        topology, primary,
        "SELECT m.roleid::regrole, m.member::regrole FROM pg_auth_members m"
        " WHERE m.roleid = 'pg_read_all_data'::regrole",
    )  # fmt: skip
    assert {member for _, member in readers} == set(topology.var(primary, "postgresql_read_roles"))


def test_the_validation_login_cannot_write_to_operations(topology):
    primary = live_primary(topology)
    with connect(topology, primary, "soc_validation") as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] > 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO soc_settings (key, value) VALUES ('probe', 'x')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"CREATE TABLE probe_{secrets.token_hex(4)} (x int)")


def test_each_login_reaches_only_its_database(topology):
    primary = live_primary(topology)
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry|permission denied"):
        connect(topology, primary, "soc_alerts", dbname="postgres")


def test_settings_sized_for_the_partitions(topology):
    for h in topology.groups["db_servers"]:
        (value,) = superuser_query(topology, h, "SHOW max_locks_per_transaction")[0]
        assert int(value) >= 256
        (ssl,) = superuser_query(topology, h, "SHOW ssl")[0]
        assert ssl == "on"


def test_the_standby_keeps_no_password_in_its_configuration(host, topology):
    _only(host, topology, "db_servers")
    name = host.backend.get_hostname()
    if superuser_query(topology, name, "SELECT pg_is_in_recovery()") != [["t"]]:
        pytest.skip("not a standby now")
    conninfo = superuser_query(topology, name, "SHOW primary_conninfo")[0][0]
    assert "passfile=" in conninfo and not re.search(r"\bpassword=", conninfo)
    auto = host.file(f"{topology.var(name, 'postgresql_data_directory')}/postgresql.auto.conf").content_string
    assert "password" not in auto
