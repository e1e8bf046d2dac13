"""Reduction of one chunk revision: packets -> image parameters -> sky positions -> cross-match -> Main
Database, with payload health, in the revision's transaction (pipeline.chunks.reduce_due calls it).

Each stage is a module of its own (pipeline.reduce.*, pipeline.health, pipeline.db.load); this module
only chains them and holds the I/O: which catalogue sources and which new sources a chunk is matched
against, what is written where.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import healpy as hp
import numpy as np
import psycopg

from pipeline import __version__
from pipeline.db.load import (
    empty_transits,
    healpix_of,
    healpix_order,
    load_transits,
    read_transits,
    upsert_sources,
)
from pipeline.db.migrate import settings
from pipeline.distribute import write_product
from pipeline.health import HK_KINDS, HealthLimits, bias_before, chunk_science, monitor_chunk
from pipeline.reduce.attitude import Attitude, NoTimeCorrelation, TimeCorrelation
from pipeline.reduce.crossmatch import CatalogueIndex, crossmatch
from pipeline.reduce.positions import sky_positions
from pipeline.simulate.sky import Sky
from pipeline.telemetry.decode import decode_pass

MATCH_RADIUS_ARCSEC = 1.0


class ReductionError(RuntimeError):
    pass


@dataclass
class WorkingCatalogue:
    """What detections are matched against: the catalogue known before the mission day (here the sky model
    of the simulated mission: Gaia DR3 bright stars plus the synthetic population, as named by the database
    settings catalogue_seed and catalogue_scale) and the new sources the pipeline found (table sources)."""

    sky: Sky

    @classmethod
    def from_settings(cls, conn: psycopg.Connection) -> WorkingCatalogue:
        cfg = settings(conn)
        missing = [k for k in ("catalogue_seed", "catalogue_scale") if k not in cfg]
        if missing:
            raise ReductionError(f"the database settings lack {', '.join(missing)} (set by soc db init)")
        return cls(Sky(int(cfg["catalogue_seed"]), float(cfg["catalogue_scale"])))

    def index_around(
        self, conn: psycopg.Connection, ra, dec, radius_arcsec: float
    ) -> tuple[CatalogueIndex, dict]:
        """An index of every source that can match detections at (ra, dec); also the catalogue rows."""
        pix5 = np.unique(hp.ang2pix(32, ra, dec, nest=True, lonlat=True))
        near = np.unique(np.r_[pix5, hp.get_all_neighbours(32, pix5, nest=True).ravel()])
        src = self.sky.sources(near[near >= 0])
        order = healpix_order(conn)
        pixk = np.unique(hp.ang2pix(1 << order, ra, dec, nest=True, lonlat=True))
        pixk = np.unique(np.r_[pixk, hp.get_all_neighbours(1 << order, pixk, nest=True).ravel()])
        new = conn.execute(
            "SELECT source_id, ra, dec FROM sources WHERE origin = 'new' AND healpix = ANY(%s)",
            (pixk[pixk >= 0].tolist(),),
        ).fetchall()
        nid, nra, ndec = (np.array(c) for c in zip(*new, strict=True)) if new else (np.zeros(0),) * 3
        cat = {"source_id": src["source_id"], "ra": src["ra"], "dec": src["dec"], "g": src["g"].astype(float)}
        index = CatalogueIndex.from_arrays(
            np.r_[cat["source_id"], nid.astype(np.int64)], np.r_[cat["ra"], nra], np.r_[cat["dec"], ndec],
            np.r_[cat["g"], np.full(len(nid), np.nan)], radius_arcsec,
        )  # fmt: skip
        return index, cat


@dataclass
class ChunkReducer:
    """The reducer pipeline.chunks.reduce_due calls for each due chunk revision."""

    catalogue: WorkingCatalogue
    outbox: Path | None = None  # where downstream products go (none: no products)
    limits: HealthLimits = field(default_factory=HealthLimits.load)
    radius_arcsec: float = MATCH_RADIUS_ARCSEC
    stats: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # seconds spent per stage, over all chunks reduced
    _pending: dict = field(default_factory=dict)

    def __call__(self, conn: psycopg.Connection, chunk_id: int, revision: int, packets: list[bytes]) -> int:
        chunk_s = float(settings(conn)["chunk_seconds"])
        t0, t1 = chunk_id * chunk_s, (chunk_id + 1) * chunk_s
        with self._timed("decode"):
            dec = decode_pass(b"".join(packets))
        if dec.problems:
            raise ReductionError(
                f"chunk {chunk_id}: ingested packets do not decode: {dec.problems[0].reason}"
            )
        star = dec.star
        with self._timed("image_parameters"):
            windows, tr = chunk_science(star, dec.hk_bias)
        rows = (self._transits(conn, chunk_id, star, tr, dec) if tr else None) or empty_transits()
        with self._timed("load"):
            n = load_transits(conn, rows, chunk_id, revision)
        if self.outbox is not None:
            product = {**rows, "healpix": healpix_of(rows["source_id"], healpix_order(conn))}
            product.update(chunk_id=np.full(n, chunk_id), revision=np.full(n, revision))
            self._pending[(chunk_id, revision)] = (product, chunk_s)
        hk = {k: _within(getattr(dec, k), t0, t1) for k in HK_KINDS}
        with self._timed("health"):
            self._health(conn, chunk_id, revision, chunk_s, hk, bias_before(dec.hk_bias, t0), windows, tr)
        return n

    @contextmanager
    def _timed(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    def committed(self, conn: psycopg.Connection, chunk_id: int, revision: int, input_digest: str) -> None:
        """After the revision's transaction committed: publish its downstream product, then record it
        (chunks.published). A reducer stopped in between leaves it unrecorded: recover() publishes it."""
        pending = self._pending.pop((chunk_id, revision), None)
        if self.outbox is None:
            return
        if pending is None:  # not reduced by this reducer: the revision's transits as the database holds them
            loaded = read_transits(conn, chunk_id)
            if loaded is None or loaded[0] != revision:
                return  # superseded before its product was published: the next revision's product replaces it
            pending = loaded[1], float(settings(conn)["chunk_seconds"])
        product, chunk_s = pending
        write_product(self.outbox, chunk_id, revision, product, input_digest=input_digest,
                      software_version=__version__, chunk_seconds=chunk_s)  # fmt: skip
        conn.execute(
            "UPDATE chunks SET published = true WHERE chunk_id = %s AND revision = %s", (chunk_id, revision)
        )

    def recover(self, conn: psycopg.Connection) -> list[tuple[int, int]]:
        """Publish the products of the chunk revisions that committed and were not recorded as published (a
        reducer stopped between the two, or the database lost meanwhile) -> [(chunk_id, revision)]. Only
        revisions still loaded can be; writing a product again changes nothing (pipeline.distribute)."""
        if self.outbox is None:
            return []
        todo = conn.execute(
            "SELECT c.chunk_id, c.revision, c.input_digest FROM chunks c"
            " JOIN transit_chunks t USING (chunk_id, revision) WHERE NOT c.published ORDER BY 1"
        ).fetchall()
        for chunk_id, revision, input_digest in todo:
            self.committed(conn, chunk_id, revision, input_digest)
        return [(c, r) for c, r, _ in todo]

    def _transits(self, conn, chunk_id: int, star: dict, tr: dict, dec) -> dict | None:
        with self._timed("positions"):
            try:
                tc = TimeCorrelation.from_packets(dec.timecorr)
            except NoTimeCorrelation:
                # a chunk reduced at its deadline before any time correlation of its own came down: its
                # transits wait for it (the packets that bring it are late data: a new revision)
                self.stats[chunk_id] = {"transits": len(tr["n_good"]), "without_position": 0,
                                        "without_time": len(tr["n_good"])}  # fmt: skip
                return None
            att = Attitude.from_packets(dec.attitude)
            pos = sky_positions(att, tr["obt_window"], star["fov"], star["row"], star["ac_pixel"])
        ok = pos["valid"] & (tr["n_good"] > 0) & np.isfinite(tr["obt_mean"])
        self.stats[chunk_id] = {"transits": len(ok), "without_position": int((~ok).sum()), "without_time": 0}
        if not ok.any():
            return None
        ra, dec_, g = pos["ra"][ok], pos["dec"][ok], tr["g_mag"][ok]
        with self._timed("catalogue"):
            index, cat = self.catalogue.index_around(conn, ra, dec_, self.radius_arcsec)
        with self._timed("crossmatch"):
            m = crossmatch(index, ra, dec_, g, radius_arcsec=self.radius_arcsec)
        source_id = np.where(m.source_id >= 0, m.source_id, m.new_source_id)
        if (source_id < 0).any():
            raise ReductionError(
                f"chunk {chunk_id}: {int((source_id < 0).sum())} detections got no source id"
            )
        with self._timed("sources"):
            self._sources(conn, cat, m, source_id)
        obt = tr["obt_mean"][ok]
        return {
            "source_id": source_id, "obt": obt, "t": tc.utc_of_obt(obt),
            "apid": star["apid"][ok], "seq": star["seq"][ok], "fov": star["fov"][ok],
            "ccd_row": star["row"][ok], "ac_pixel": star["ac_pixel"][ok], "ra": ra, "dec": dec_,
            "pos_err_mas": np.hypot(pos["sigma_al_mas"], pos["sigma_ac_mas"])[ok],
            "g_flux": tr["flux_e_s"][ok], "g_flux_err": tr["flux_e_s_err"][ok], "g_mag": g,
            "g_mag_err": tr["g_mag_err"][ok], "n_good": tr["n_good"][ok], "flags": tr["flags"][ok],
            "match_dist_mas": np.where(m.source_id >= 0, m.sep_arcsec * 1e3, np.nan),
            "ambiguous": m.n_candidates > 1,
        }  # fmt: skip

    @staticmethod
    def _sources(conn, cat: dict, m, source_id: np.ndarray) -> None:
        """The catalogue sources detected in the chunk and its new sources go into table sources."""
        pick = np.isin(cat["source_id"], source_id[m.source_id >= 0])
        ns = m.new_sources
        n_new, n_cat = len(ns["source_id"]), int(pick.sum())
        rows = {
            "source_id": np.r_[cat["source_id"][pick], ns["source_id"]].astype(np.int64),
            "ra": np.r_[cat["ra"][pick], ns["ra"]],
            "dec": np.r_[cat["dec"][pick], ns["dec"]],
            "g_ref": np.r_[cat["g"][pick], np.full(n_new, np.nan)],
            "origin": np.array(["catalogue"] * n_cat + ["new"] * n_new, dtype=object),
        }
        if n_cat + n_new:
            upsert_sources(conn, rows)

    def _health(self, conn, chunk_id, revision, chunk_s, hk, before, windows, tr) -> None:
        events, summary = monitor_chunk(
            chunk_id, hk, windows, tr, self.limits, before=before, chunk_seconds=chunk_s
        )
        with conn.cursor().copy(
            "COPY health_events (chunk_id, revision, kind, severity, ccd_row, ccd_column, t_start_obt,"
            " t_end_obt, value, limit_value, detail) FROM STDIN"
        ) as copy:
            for e in _unique_events(events):
                copy.write_row((chunk_id, revision, e.kind, str(e.severity), e.row, e.column, e.t_start_obt,
                                e.t_end_obt, _finite(e.value), _finite(e.limit), e.detail))  # fmt: skip
        conn.execute(
            "INSERT INTO health_summary (chunk_id, revision, summary) VALUES (%s, %s, %s)",
            (chunk_id, revision, json.dumps(_to_json(summary), sort_keys=True)),
        )


def _unique_events(events):
    seen = set()
    for e in events:
        key = (e.kind, e.row, e.column, e.t_start_obt)
        if key not in seen:
            seen.add(key)
            yield e


def _within(part: dict, t0: float, t1: float) -> dict:
    if not part or not len(part.get("obt", [])):
        return {}
    keep = (part["obt"] >= t0) & (part["obt"] < t1)
    return {k: np.asarray(v)[keep] for k, v in part.items()}


def _finite(x):
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _to_json(x):
    if isinstance(x, dict):
        return {str(k): _to_json(v) for k, v in x.items()}
    if isinstance(x, np.ndarray | list | tuple):
        return [_to_json(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _from_json(x):
    if isinstance(x, dict):
        return {k: _from_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_json(v) for v in x]
    return float("nan") if x is None else x


def health_report(
    conn: psycopg.Connection, obt_lo: float, obt_hi: float, path, title: str
) -> tuple[int, int]:
    """HTML health report of the current chunk revisions in [obt_lo, obt_hi) -> (chunks, events)."""
    from pipeline.health import HealthEvent, Severity, write_health_report

    chunk_s = float(settings(conn)["chunk_seconds"])
    lo, hi = int(obt_lo // chunk_s), int(np.ceil(obt_hi / chunk_s))
    current = "SELECT chunk_id, revision FROM current_chunks WHERE chunk_id >= %s AND chunk_id < %s"
    series = [
        _from_json(s)
        for (s,) in conn.execute(
            f"SELECT h.summary FROM health_summary h JOIN ({current}) c USING (chunk_id, revision)"
            " ORDER BY chunk_id",
            (lo, hi),
        )
    ]
    events = [
        HealthEvent(c, k, Severity.parse(sev), r, col, t0, t1, _from_json(v), _from_json(lim), d)
        for c, k, sev, r, col, t0, t1, v, lim, d in conn.execute(
            "SELECT e.chunk_id, kind, severity, ccd_row, ccd_column, t_start_obt, t_end_obt, value,"
            f" limit_value, detail FROM health_events e JOIN ({current}) c USING (chunk_id, revision)"
            " ORDER BY 1, 6",
            (lo, hi),
        )
    ]
    write_health_report(events, series, path, title=title)
    return len(series), len(events)


def make_reducer(conn: psycopg.Connection, outbox: str | None = None) -> ChunkReducer:
    """The standard reducer for a database (picklable with functools.partial, for worker processes)."""
    return ChunkReducer(WorkingCatalogue.from_settings(conn), outbox=Path(outbox) if outbox else None)
