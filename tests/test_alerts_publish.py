"""Publication of alerts on a real database with a small synthetic sky loaded by the pipeline's loader: a
brightening, a fade, a new source, a brightening beside a brighter star over a pixel edge (rejected), quiet
stars. An alerts run raises them; publishing writes the index, light curves and VOEvents in the formats of
the real Gaia data (read back with the real data's parsers and rules), names follow the Gaia sequence over
two publications and are never reused, and publishing again writes the same bytes."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import healpy as hp
import numpy as np
import psycopg
import pytest

from pipeline.alerts import names
from pipeline.alerts.candidates import TransitionError, assess, get_candidate, list_candidates, reject
from pipeline.alerts.gaia_lightcurves import read_alerts, read_lightcurve
from pipeline.alerts.publish import (
    INDEX_HEADER,
    LIGHTCURVE_HEADER,
    VOEVENT_NS,
    VOEventError,
    check_voevent,
    publish,
    utc_text,
)
from pipeline.alerts.run import run_alerts
from pipeline.db.load import empty_transits, load_transits, upsert_sources
from pipeline.mission_time import from_utc

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gaia-alerts"
CHUNK_S = 1800.0
T0 = float(from_utc("2016-08-01T00:00:00"))
DAY = 86400.0
AUTHORITY = "soc.example.org"
UNIX_AT_MISSION_EPOCH = 1262304000.0  # 2010-01-01T00:00:00 UTC in Unix seconds


def _source_id(ra: float, dec: float, k: int) -> int:
    """A Gaia-style id: the level-12 nested cell of the position in bits 35 and up."""
    return (int(hp.ang2pix(1 << 12, ra, dec, nest=True, lonlat=True)) << 35) + k


def _edge_pair(order: int = 2):
    """Two positions 2 arcsec apart on either side of the edge between pixel 17 of ORDER and the next."""
    nside = 1 << order
    centre = np.asarray(hp.pix2vec(nside, 17, nest=True))
    edge = hp.boundaries(nside, 17, step=16, nest=True).T[8]  # a point on one edge (healpy's boundary)
    inward = centre - edge * (edge @ centre)
    inward /= np.linalg.norm(inward)
    step = np.radians(1.0 / 3600.0)
    inside, outside = edge + step * inward, edge - step * inward
    assert hp.vec2pix(nside, *inside, nest=True) == 17 != hp.vec2pix(nside, *outside, nest=True)
    (ra1, ra2), (dec1, dec2) = hp.vec2ang(np.array([inside, outside]), lonlat=True)
    return (float(ra1), float(dec1)), (float(ra2), float(dec2))


def _sky():
    """{name: (source_id, ra, dec, g_ref or NaN, origin)}."""
    (ra_e, dec_e), (ra_f, dec_f) = _edge_pair()
    spots = {
        "bright": (40.0, 10.0, 15.0), "fade": (41.0, 10.5, 14.0), "quiet": (42.0, 11.0, 16.0),
        "new": (43.0, 11.5, np.nan), "shadowed": (ra_e, dec_e, 17.0), "neighbour": (ra_f, dec_f, 12.0),
    }  # fmt: skip
    return {
        k: (_source_id(ra, dec, i), ra, dec, g, "new" if np.isnan(g) else "catalogue")
        for i, (k, (ra, dec, g)) in enumerate(spots.items())
    }


def _transits(sky, chunk: int, visit_t: float, mags: dict[str, float], rng) -> dict:
    """One visit (both fields of view, 10 min apart) of the named sources, in one chunk."""
    rows: dict[str, list] = {k: [] for k in empty_transits()}
    for name, g in mags.items():
        sid, ra, dec, _, _ = sky[name]
        for fov, dt in ((0, 0.0), (1, 600.0)):
            t = visit_t + dt
            vals = {
                "source_id": sid, "obt": chunk * CHUNK_S + 10.0 + dt + 0.001 * (sid % 1000), "t": t,
                "apid": 0x120, "seq": len(rows["source_id"]), "fov": fov, "ccd_row": 3, "ac_pixel": 900,
                "ra": ra, "dec": dec, "pos_err_mas": 0.4, "g_flux": 1e4, "g_flux_err": 10.0,
                "g_mag": g + rng.normal(0, 0.01), "g_mag_err": 0.01, "n_good": 10, "flags": 0,
                "match_dist_mas": 1.0, "ambiguous": False,
            }  # fmt: skip
            for k, v in vals.items():
                rows[k].append(v)
    template = empty_transits()
    return {k: np.array(v, dtype=template[k].dtype) for k, v in rows.items()}


def _load(conn, sky, chunk: int, visit_t: float, mags: dict[str, float], rng) -> None:
    with conn.transaction():
        load_transits(conn, _transits(sky, chunk, visit_t, mags, rng), chunk, 1)


@pytest.fixture(scope="module")
def sky_db(pg_server, pg_template):
    """Eight historic visits of every catalogue source, then a visit with the events (alerts run 1)."""
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS soc_alerts_publish")
        conn.execute(f"CREATE DATABASE soc_alerts_publish TEMPLATE {pg_template}")
    dsn = pg_server.dsn("soc_alerts_publish")
    sky = _sky()
    rng = np.random.default_rng(7)
    quiet = {k: v[3] for k, v in sky.items() if v[4] == "catalogue"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            upsert_sources(conn, {
                "source_id": np.array([v[0] for v in sky.values()], np.int64),
                "ra": np.array([v[1] for v in sky.values()]), "dec": np.array([v[2] for v in sky.values()]),
                "g_ref": np.array([v[3] for v in sky.values()]),
                "origin": np.array([v[4] for v in sky.values()], dtype=object),
            })  # fmt: skip
        for visit in range(8):
            t = T0 + visit * 3 * DAY
            _load(conn, sky, int(t // CHUNK_S), t, quiet, rng)
    assert run_alerts(dsn, workers=1).run_id == 1  # the history: nothing to alert on
    with psycopg.connect(dsn, autocommit=True) as conn:
        t = T0 + 30 * DAY
        events = {**quiet, "bright": 13.0, "fade": 15.5, "new": 17.5, "shadowed": 15.0}
        _load(conn, sky, int(t // CHUNK_S), t, events, rng)
    report = run_alerts(dsn, workers=2)
    return {"dsn": dsn, "sky": sky, "run": report}


def _tree(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*")
            if p.is_file()}  # fmt: skip


def test_the_run_raises_the_events_and_rejects_the_one_beside_a_brighter_star(sky_db):
    run, sky = sky_db["run"], sky_db["sky"]
    assert run.run_id == 2 and run.sources == 6
    with psycopg.connect(sky_db["dsn"]) as conn:
        got = {c.source_id: c.detector for c in list_candidates(conn)}
    by_id = {v[0]: k for k, v in sky.items()}
    assert {by_id[s]: d for s, d in got.items()} == {
        "bright": "brightening", "fade": "fading", "new": "new_source"
    }  # fmt: skip
    # the shadowed source brightened too, but a brighter catalogue star 2" away, in the next pixel, rejects it
    assert run.by_detector["brightening"]["raised"] == 2 and run.by_filter["bright_neighbour"] == 1


@pytest.fixture(scope="module")
def published(sky_db, tmp_path_factory):
    """Publication 1: the brightening and the new source; publication 2 (later): the fade."""
    dsn, sky = sky_db["dsn"], sky_db["sky"]
    out = tmp_path_factory.mktemp("alerts-out")
    by_name = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        cands = {c.source_id: c for c in list_candidates(conn)}
        by_name = {k: cands[v[0]].candidate_id for k, v in sky.items() if v[0] in cands}
        assess(conn, by_name["bright"], "ana", 'rise of 2 mag, "red" star, near galaxy', "SN")
        assess(conn, by_name["new"], "ana")
        first = publish(conn, out, "eve", AUTHORITY)
        tree1 = _tree(out)
        again = publish(conn, out, "eve", AUTHORITY)
        tree_again = _tree(out)
        assess(conn, by_name["fade"], "ben", "fades by 1.5 mag", "RCrB")
        second = publish(conn, out, "eve", AUTHORITY)
        tree2 = _tree(out)
    return {"out": out, "ids": by_name, "first": first, "again": again, "second": second,
            "tree1": tree1, "tree_again": tree_again, "tree2": tree2, "dsn": dsn}  # fmt: skip


def test_names_follow_the_gaia_sequence_in_order_of_publication(published):
    first, second = published["first"], published["second"]
    ids = published["ids"]
    year = int(names.parse_name(first.published[0][1])[0])
    assert first.published == [
        (ids["bright"], names.alert_name(year, 0)), (ids["new"], names.alert_name(year, 1))
    ]  # fmt: skip
    assert published["again"].published == []
    assert second.published == [(ids["fade"], names.alert_name(year, 2))]
    with psycopg.connect(published["dsn"]) as conn:
        (now_year,) = conn.execute("SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int % 100").fetchone()
    assert year == now_year  # the year of publication, as in the real index


def test_a_name_is_never_reassigned_nor_reused(published):
    dsn, ids = published["dsn"], published["ids"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = conn.execute(
            "SELECT name, candidate_id, assigned_at FROM alert_names ORDER BY name"
        ).fetchall()
        with pytest.raises(TransitionError, match=r"published -> rejected is not allowed"):
            reject(conn, ids["bright"], "ana", "retracted")
        for sql in ("DELETE FROM alert_names", "UPDATE alert_names SET candidate_id = candidate_id",
                    "TRUNCATE alert_names CASCADE"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="alert names are permanent"):
                conn.execute(sql)
        with conn.transaction():  # asking again for a published candidate's name gives the same name
            (now,) = conn.execute("SELECT now()").fetchone()
            assert names.assign_name(conn, ids["bright"], now) == before[0][0]
        after = conn.execute(
            "SELECT name, candidate_id, assigned_at FROM alert_names ORDER BY name"
        ).fetchall()
        assert after == before
        assert get_candidate(conn, ids["bright"]).name == before[0][0]


def test_publishing_again_writes_the_same_bytes(published):
    assert published["again"].written == [] and published["tree_again"] == published["tree1"]
    t1, t2 = published["tree1"], published["tree2"]
    changed = {k for k in t2 if t1.get(k) != t2[k]}
    name3 = published["second"].published[0][1]
    assert changed == {"alerts.csv", f"lightcurves/{name3}.csv", f"voevents/{name3}.xml"}


def _raw_fields(line: str) -> list[str]:
    """The fields of a CSV line as written (quotes kept), to compare layouts, not values."""
    out, i = [], 0
    while True:
        if line.startswith('"', i):
            j = i + 1
            while (j := line.index('"', j)) + 1 < len(line) and line[j + 1] == '"':
                j += 2
            out.append(line[i : j + 1])
            i = j + 1
        else:
            j = line.find(",", i)
            j = len(line) if j < 0 else j
            out.append(line[i:j])
            i = j
        if i >= len(line):
            return out
        i += 1  # the comma
        if i == len(line):
            return [*out, ""]


def _signature(line: str) -> tuple:
    """The layout of an index line: per field quoted / empty / name / UTC time / decimals / bare text."""
    out = []
    for f in _raw_fields(line):
        if f.startswith('"'):
            out.append("quoted")
        elif f == "":
            out.append("empty")
        elif re.fullmatch(r"Gaia\d{2}[a-z]{3,}", f):
            out.append("name")
        elif re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", f):
            out.append("utc")
        elif re.fullmatch(r"-?\d+\.\d+", f):
            out.append(f"{len(f.split('.')[1])} decimals")
        else:
            out.append("bare")
    return tuple(out)


def test_the_index_has_the_real_index_format(published):
    text = (published["out"] / "alerts.csv").read_text()
    lines = text.split("\n")
    assert lines[0] == INDEX_HEADER and text.endswith("\n\n") and lines[-2:] == ["", ""]
    rows = lines[1:-2]
    assert len(rows) == 3 and all(not r.startswith(" ") for r in rows)
    if REAL.exists():
        real = (REAL / "alerts.csv").read_text().split("\n")
        assert lines[0] == real[0]
        real_sigs = {_signature(r) for r in real[1:] if r}
        assert all(_signature(r) in real_sigs for r in rows), [_signature(r) for r in rows]
    # read back as the real index is read: skipinitialspace, quoted commas, empty historic fields
    parsed = read_alerts(published["out"] / "alerts.csv")
    assert list(parsed.name) == sorted(parsed.name, key=names.sort_key, reverse=True)
    with psycopg.connect(published["dsn"]) as conn:
        for k in range(len(parsed)):
            c = next(x for x in list_candidates(conn, status="published") if x.name == parsed.name[k])
            assert parsed.t[k] == np.floor(c.t_trigger)
            assert (parsed.ra[k], parsed.dec[k]) == pytest.approx((c.ra, c.dec), abs=6e-6)
            assert parsed.alert_mag[k] == pytest.approx(c.alert_mag, abs=0.006)
            assert parsed.cls[k] == c.alert_class
            if c.detector == "new_source":
                assert np.isnan(parsed.historic_mag[k]) and np.isnan(parsed.historic_std[k])
            else:
                assert parsed.historic_mag[k] == pytest.approx(c.historic_mag, abs=0.006)
            assert utc_text(parsed.published[k]) == c.published_at.strftime("%Y-%m-%d %H:%M:%S")
    bright = parsed.row(published["first"].published[0][1])
    assert bright["comment"] == 'rise of 2 mag, "red" star, near galaxy' and bright["cls"] == "SN"


def test_light_curves_have_the_gaia_format(published):
    out = published["out"]
    index = read_alerts(out / "alerts.csv")
    real_headers = set()
    if REAL.exists():
        real_headers = {p.read_text().split("\n")[1] for p in (REAL / "lightcurves").glob("*.csv")}
        assert LIGHTCURVE_HEADER in real_headers
    row_re = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{7}\.\d{3},(\d+\.\d\d|null|untrusted)$")
    with psycopg.connect(published["dsn"]) as conn:
        for name in index.name:
            path = out / "lightcurves" / f"{name}.csv"
            text = path.read_text()
            lines = text.split("\n")
            assert lines[0] == name and lines[1] == LIGHTCURVE_HEADER and text.endswith("\n\n")
            assert all(row_re.match(r) for r in lines[2:-2]), lines[2:5]
            lc = read_lightcurve(path)  # the real light curves' parser (checks JD against the date)
            c = next(x for x in list_candidates(conn, status="published") if x.name == name)
            (n,) = conn.execute(
                "SELECT count(*) FROM transits WHERE healpix = %s AND source_id = %s",
                (c.healpix, c.source_id),
            ).fetchone()
            assert len(lc) == n and (np.diff(lc.t) >= 0).all()
            # as in the real data: the index Date is a light-curve row, whose magnitude is AlertMag
            k = int(np.flatnonzero(lc.t == index.row(name)["t"])[0])
            assert lc.mag[k] == pytest.approx(index.row(name)["alert_mag"], abs=1e-9)
            jd_unix = 2440587.5 + (lc.t + UNIX_AT_MISSION_EPOCH) / 86400.0
            assert np.abs(lc.jd - jd_unix).max() < 0.0006  # the README's rule, from Unix time


def test_voevents_are_valid_and_carry_the_alert(published):
    out = published["out"]
    index = read_alerts(out / "alerts.csv")
    for k, name in enumerate(index.name):
        data = (out / "voevents" / f"{name}.xml").read_bytes()
        assert check_voevent(data)
        root = ET.fromstring(data)
        assert root.tag == f"{{{VOEVENT_NS}}}VOEvent" and root.get("version") == "2.0"
        assert root.get("ivorn") == f"ivo://{AUTHORITY}/alerts#{name}" and root.get("role") == "observation"
        assert [child.tag for child in root] == ["Who", "What", "WhereWhen", "How", "Why"]
        pos = root.find("WhereWhen/ObsDataLocation/ObservationLocation/AstroCoords/Position2D")
        assert float(pos.findtext("Value2/C1")) == pytest.approx(index.ra[k], abs=1e-9)
        assert float(pos.findtext("Value2/C2")) == pytest.approx(index.dec[k], abs=1e-9)
        assert float(pos.findtext("Error2Radius")) > 0
        system = root.find("WhereWhen/ObsDataLocation/ObservationLocation/AstroCoordSystem").get("id")
        assert "ICRS" in system
        iso = root.findtext(
            "WhereWhen/ObsDataLocation/ObservationLocation/AstroCoords/Time/TimeInstant/ISOTime"
        )
        assert iso.replace("T", " ") == utc_text(index.t[k])
        assert root.findtext("Why/Concept") == index.cls[k]
        assert root.findtext("Who/Date").replace("T", " ") == utc_text(index.published[k])
        mags = {p.get("name"): p.get("value") for p in root.find("What/Group[@name='alert-magnitude']")}
        assert float(mags["averagemag"]) == pytest.approx(index.alert_mag[k], abs=1e-9)


def test_a_broken_voevent_is_refused():
    good = (
        f'<voe:VOEvent xmlns:voe="{VOEVENT_NS}" ivorn="ivo://a.b/alerts#x" version="2.0"><Who><AuthorIVORN>'
        "ivo://a.b</AuthorIVORN><Date>2016-08-01T00:00:00</Date></Who><Why><Concept>SN</Concept></Why>"
        "</voe:VOEvent>"
    )
    assert check_voevent(good.encode())
    for bad, why in (
        (good.replace('version="2.0"', 'version="1.1"'), "version"),
        (good.replace("ivo://a.b/alerts#x", "http://a.b"), "ivorn"),
        (good.replace("<Why><Concept>SN</Concept></Why>", ""), "Why"),
        (good.replace("<Who>", "<Who><Date>now</Date>", 1), "xs:dateTime"),
        (good.replace("</Who>", "</Who><Who><AuthorIVORN>ivo://c</AuthorIVORN></Who>"), "more than one Who"),
        (good[:-5], "well-formed"),
    ):
        with pytest.raises(VOEventError, match=why):
            check_voevent(bad.encode())
