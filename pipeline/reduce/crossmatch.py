"""Cross-match of transit detections with the working catalogue through a HEALPix index.

Index (CatalogueIndex): the catalogue sorted by its nested HEALPix pixel at a level chosen from the match
radius (the deepest level whose pixel size, sqrt(area), is at least radius / INDEX_RADIUS_FRACTION), so
that every source within the radius of a point lies in the point's pixel or one of its 8 neighbours.
Candidates of a detection: its pixel and healpy.get_all_neighbours, looked up in the sorted pixel list
(searchsorted), expanded into (detection, source) pairs with np.repeat; separations from unit vectors.
Everything is vectorised; detections are processed in chunks to bound memory.

Result per detection (crossmatch -> MatchResult): the principal match (the nearest source within the
radius; if the detection has a magnitude, among the sources at most tie_arcsec further than the nearest
one the one closest in G wins), the full candidate list of ambiguous detections (more than one source
within the radius), and the unmatched detections. Unmatched detections are grouped friends-of-friends
within the radius (one group = one new object) and each group gets a new source id from its mean
position (new_source_ids):

    source_id = (level-12 nested pixel << 35) | bits 34, 33, 32, 31 | (collision count << 28)
                | (level-26 nested index within the level-12 pixel, 28 bits: a 3.1-mas cell)

so that the same detections give the same ids in any order. Ids of the other schemes: real Gaia DR3
(low 35 bits < 2^34), the simulator's synthetic sources (bit 34, running number < 2^33) and the
simulator's new sources (bits 34 and 33, (birth bin + 2^20) in bits 12..32, which has bit 31 clear for
birth bins in [-2^20, 2^19), i.e. anything within 143,000 years of 2010). add_new_sources puts the new
sources into the index so that later detections match them.

Details, id scheme and measured figures: docs/positions_and_crossmatch.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import healpy as hp
import numpy as np
import numpy.typing as npt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

DEFAULT_RADIUS_ARCSEC = 1.0
DEFAULT_TIE_ARCSEC = 0.1  # near-tie window for the magnitude tie-break (about 2 sigma of the AC error)
INDEX_RADIUS_FRACTION = 0.4  # radius <= this x pixel size (containment measured to hold up to 0.65)
MAX_LEVEL = 29
CHUNK = 1 << 19  # detections per chunk of the pair search

ID_LEVEL = 12
ID_SHIFT = 35
NEW_SOURCE_FLAGS = (1 << 34) | (1 << 33) | (1 << 32) | (1 << 31)
COUNTER_SHIFT = 28
MAX_COUNTER = 7  # bits 28..30
CELL_LEVEL = 26  # running number: level-26 nested index inside the level-12 pixel (2^28 cells, 3.1 mas)
_CELL_MASK = (1 << (2 * (CELL_LEVEL - ID_LEVEL))) - 1
_ARCSEC = np.deg2rad(1.0 / 3600.0)


def radec_to_xyz(ra_deg, dec_deg) -> np.ndarray:
    ra = np.deg2rad(np.asarray(ra_deg, dtype=float))
    dec = np.deg2rad(np.asarray(dec_deg, dtype=float))
    cd = np.cos(dec)
    return np.stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)], axis=-1)


def xyz_to_radec(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ra = np.mod(np.rad2deg(np.arctan2(u[..., 1], u[..., 0])), 360.0)
    dec = np.rad2deg(np.arcsin(np.clip(u[..., 2], -1.0, 1.0)))
    return ra, dec


def index_level(radius_arcsec: float) -> int:
    """Deepest nested level whose pixel size (sqrt of its area) is >= radius / INDEX_RADIUS_FRACTION."""
    if not radius_arcsec > 0:
        raise ValueError("radius must be > 0")
    need = np.deg2rad(radius_arcsec / 3600.0) / INDEX_RADIUS_FRACTION
    levels = np.arange(MAX_LEVEL + 1)
    ok = np.array([hp.nside2resol(1 << int(lv)) for lv in levels]) >= need
    if not ok[0]:
        raise ValueError(f"radius {radius_arcsec} arcsec too large for a HEALPix neighbour search")
    return int(levels[ok].max())


def _chord(radius_arcsec: float) -> float:
    return 2.0 * np.sin(0.5 * radius_arcsec * _ARCSEC)


def _field(cat, name, n):
    try:
        return np.asarray(cat[name])
    except (KeyError, ValueError, IndexError):
        return np.full(n, np.nan)


# --- the index -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CatalogueIndex:
    """A catalogue (source_id, ra, dec, g) sorted by its nested pixel at `level`, with pixel runs.

    Build with CatalogueIndex.build(catalogue, radius_arcsec); catalogue is anything with the fields
    source_id, ra, dec (deg) and optionally g (a structured array such as Sky.sources(), a dict of
    arrays, a DataFrame).
    """

    radius_arcsec: float
    level: int
    source_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    g: np.ndarray
    xyz: np.ndarray
    pix: np.ndarray  # sorted
    upix: np.ndarray  # distinct pixels
    start: np.ndarray  # first row of each distinct pixel
    count: np.ndarray

    @classmethod
    def build(cls, catalogue, radius_arcsec: float = DEFAULT_RADIUS_ARCSEC, level: int | None = None):
        sid = np.asarray(catalogue["source_id"], dtype=np.int64).ravel()
        n = len(sid)
        ra = np.asarray(catalogue["ra"], dtype=float).ravel()
        dec = np.asarray(catalogue["dec"], dtype=float).ravel()
        g = np.asarray(_field(catalogue, "g", n), dtype=float).ravel()
        return cls.from_arrays(sid, ra, dec, g, radius_arcsec, level)

    @classmethod
    def from_arrays(cls, source_id, ra, dec, g=None, radius_arcsec=DEFAULT_RADIUS_ARCSEC, level=None):
        source_id = np.asarray(source_id, dtype=np.int64).ravel()
        ra = np.asarray(ra, dtype=float).ravel()
        dec = np.asarray(dec, dtype=float).ravel()
        g = np.full(len(ra), np.nan) if g is None else np.asarray(g, dtype=float).ravel()
        if not (len(source_id) == len(ra) == len(dec) == len(g)):
            raise ValueError("catalogue columns differ in length")
        if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
            raise ValueError("catalogue positions must be finite")
        level = index_level(radius_arcsec) if level is None else int(level)
        xyz = radec_to_xyz(ra, dec).reshape(-1, 3)
        pix = hp.vec2pix(1 << level, xyz[:, 0], xyz[:, 1], xyz[:, 2], nest=True).astype(np.int64)
        order = np.lexsort((source_id, pix))  # deterministic whatever the input order
        pix = pix[order]
        upix, start, count = np.unique(pix, return_index=True, return_counts=True)
        return cls(
            radius_arcsec=float(radius_arcsec),
            level=level,
            source_id=source_id[order],
            ra=ra[order],
            dec=dec[order],
            g=g[order],
            xyz=np.ascontiguousarray(xyz[order]),
            pix=pix,
            upix=upix,
            start=start.astype(np.int64),
            count=count.astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.source_id)

    def catalogue(self) -> dict[str, np.ndarray]:
        """The indexed catalogue as a dict of arrays (index order)."""
        return {"source_id": self.source_id, "ra": self.ra, "dec": self.dec, "g": self.g}

    def extended(self, source_id, ra, dec, g=None) -> CatalogueIndex:
        """A new index with these sources added (same radius and level)."""
        g = np.full(len(np.atleast_1d(ra)), np.nan) if g is None else g
        return CatalogueIndex.from_arrays(
            np.r_[self.source_id, np.asarray(source_id, dtype=np.int64).ravel()],
            np.r_[self.ra, np.asarray(ra, dtype=float).ravel()],
            np.r_[self.dec, np.asarray(dec, dtype=float).ravel()],
            np.r_[self.g, np.asarray(g, dtype=float).ravel()],
            self.radius_arcsec,
            self.level,
        )

    def pairs(self, xyz: np.ndarray, radius_arcsec: float | None = None):
        """All (detection, catalogue row) pairs within the radius of the unit vectors xyz (n, 3).

        Returns (det (k,), row (k,), sep_arcsec (k,)); the pairs of one detection are contiguous
        (detections come in the order of their HEALPix pixel, which keeps the lookups cache-friendly).
        A radius larger than the index's own radius raises (the 3x3 pixel block would not cover it).
        """
        r = self.radius_arcsec if radius_arcsec is None else float(radius_arcsec)
        if r > self.radius_arcsec * (1 + 1e-12):
            raise ValueError(f"radius {r} arcsec exceeds the index radius {self.radius_arcsec}")
        xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
        empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        if len(xyz) == 0 or len(self.upix) == 0:
            return empty
        chord2 = _chord(r) ** 2
        nside = 1 << self.level
        own_all = hp.vec2pix(nside, xyz[:, 0], xyz[:, 1], xyz[:, 2], nest=True).astype(np.int64)
        by_pix = np.argsort(own_all, kind="stable")
        out_d, out_r, out_s = [], [], []
        for c0 in range(0, len(xyz), CHUNK):
            sel = by_pix[c0 : c0 + CHUNK]
            m = len(sel)
            own = own_all[sel]
            cand: npt.NDArray[np.int64] = np.empty((m, 9), np.int64)
            cand[:, 0] = own
            cand[:, 1:] = hp.get_all_neighbours(nside, own, nest=True).T  # -1 where missing
            cand = cand.ravel()
            k = np.minimum(np.searchsorted(self.upix, cand), len(self.upix) - 1)
            hit = (self.upix[k] == cand) & (cand >= 0)
            kh = k[hit]
            cnt = self.count[kh]
            total = int(cnt.sum())
            if total == 0:
                continue
            per_det = np.bincount(np.flatnonzero(hit) // 9, weights=cnt, minlength=m).astype(np.int64)
            det = np.repeat(sel, per_det)
            first = np.cumsum(cnt) - cnt
            row = np.repeat(self.start[kh] - first, cnt) + np.arange(total, dtype=np.int64)
            d = self.xyz[row] - xyz[det]
            c2 = np.einsum("ij,ij->i", d, d)
            keep = c2 <= chord2
            out_d.append(det[keep])
            out_r.append(row[keep])
            out_s.append(2.0 * np.arcsin(0.5 * np.sqrt(c2[keep])) / _ARCSEC)
        if not out_d:
            return empty
        return np.concatenate(out_d), np.concatenate(out_r), np.concatenate(out_s)


# --- new-source ids --------------------------------------------------------------------------------------
def is_new_source_id(source_id) -> np.ndarray:
    """True for ids of this module's new-source scheme (positive, bits 31 to 34 set)."""
    sid = np.asarray(source_id, dtype=np.int64)
    return (sid > 0) & ((sid & NEW_SOURCE_FLAGS) == NEW_SOURCE_FLAGS)


def new_source_ids(xyz: np.ndarray, existing=None) -> np.ndarray:
    """Ids of new sources at the unit vectors xyz (m, 3) (see the module docstring).

    The collision count (bits 28..30) is 0 unless two new sources share a 3.1-mas cell, or one falls in
    the cell of an id in `existing`: then the one with the smaller (x, y, z) keeps the lower count.
    """
    xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
    if len(xyz) == 0:
        return np.zeros(0, np.int64)
    cell = hp.vec2pix(1 << CELL_LEVEL, xyz[:, 0], xyz[:, 1], xyz[:, 2], nest=True).astype(np.int64)
    pix12 = cell >> (2 * (CELL_LEVEL - ID_LEVEL))
    ids = (pix12 << ID_SHIFT) | NEW_SOURCE_FLAGS | (cell & _CELL_MASK)
    taken = np.zeros(0, np.int64) if existing is None else np.asarray(existing, dtype=np.int64).ravel()
    taken = np.sort(taken[is_new_source_id(taken)])
    for _ in range(MAX_COUNTER + 1):
        order = np.lexsort((xyz[:, 2], xyz[:, 1], xyz[:, 0], ids))
        s = ids[order]
        dup_new = np.r_[False, s[1:] == s[:-1]]  # later duplicates (canonical order) move on
        pos = np.minimum(np.searchsorted(taken, s), max(len(taken) - 1, 0))
        dup_old = (taken[pos] == s) if len(taken) else np.zeros(len(s), bool)
        bump = dup_new | dup_old
        if not bump.any():
            return ids
        if (((s[bump] >> COUNTER_SHIFT) & MAX_COUNTER) == MAX_COUNTER).any():
            break
        ids[order[bump]] += 1 << COUNTER_SHIFT
    raise RuntimeError("more than 8 new sources in one 3.1-mas cell")


def group_friends_of_friends(xyz: np.ndarray, radius_arcsec: float) -> np.ndarray:
    """Friends-of-friends labels (m,) of the unit vectors xyz within radius_arcsec (0..n_groups-1).

    Labels follow the input order (the group of the first point is 0, ...).
    """
    xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
    m = len(xyz)
    if m == 0:
        return np.zeros(0, np.int64)
    idx = CatalogueIndex.from_arrays(np.arange(m), *xyz_to_radec(xyz), None, radius_arcsec)
    det, row, _ = idx.pairs(xyz)
    j = idx.source_id[row]  # back to input positions
    keep = det < j
    graph = coo_matrix((np.ones(int(keep.sum()), np.int8), (det[keep], j[keep])), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    # relabel in order of first appearance
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv]


# --- the cross-match -------------------------------------------------------------------------------------
@dataclass
class MatchResult:
    """Cross-match result over n detections (indices refer to the input order).

    source_id (n,): principal catalogue match, -1 if none; sep_arcsec (n,): its separation (NaN if none);
    n_candidates (n,): catalogue sources within the radius;
    ambiguous: dict of pair arrays detection, source_id, sep_arcsec, principal (bool) holding every
      candidate of the detections with n_candidates > 1, ordered by detection then separation;
    unmatched (k,): detections without a candidate (and with a finite position);
    invalid (j,): detections with a non-finite position (neither matched nor grouped);
    new_source_id (n,): id of the new source an unmatched detection belongs to, -1 otherwise;
    new_sources: dict source_id, ra, dec, g (mean of the detections' G, NaN if none), n_detections,
      sorted by source_id.
    """

    source_id: np.ndarray
    sep_arcsec: np.ndarray
    n_candidates: np.ndarray
    ambiguous: dict[str, np.ndarray]
    unmatched: np.ndarray
    invalid: np.ndarray
    new_source_id: np.ndarray
    new_sources: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def matched(self) -> np.ndarray:
        return self.source_id >= 0


def _group_min(values: np.ndarray, starts: np.ndarray, gid: np.ndarray, allowed: np.ndarray):
    """Per group, the pairs that are allowed and reach the group's minimum of values among those."""
    fill = np.inf if values.dtype.kind == "f" else np.iinfo(values.dtype).max
    v = np.where(allowed, values, fill)
    return allowed & (v == np.minimum.reduceat(v, starts)[gid])


def _principal(det, row, sep, n, cat_sid, cat_g, g_det, tie_arcsec):
    """Index into the pairs of each detection's principal match (-1 if none), and candidate counts.

    Pairs of one detection must be contiguous. Lexicographic minimum per detection of
    (|G_det - G_cat| among near ties, separation, source id), without sorting.
    """
    best = np.full(n, -1, np.int64)
    n_cand = np.bincount(det, minlength=n).astype(np.int64)
    if len(det) == 0:
        return best, n_cand
    is_start = np.r_[True, det[1:] != det[:-1]]
    starts = np.flatnonzero(is_start)
    gid = np.cumsum(is_start) - 1
    cand = np.ones(len(det), bool)
    if g_det is not None and tie_arcsec > 0:
        near = sep - np.minimum.reduceat(sep, starts)[gid] <= tie_arcsec
        dg = np.abs(g_det[det] - cat_g[row])
        dg = np.where(np.isfinite(dg), dg, np.inf)
        cand = _group_min(np.where(near, dg, np.inf), starts, gid, near)
        # groups whose near candidates all lack G: every near candidate stays (inf == inf)
    cand = _group_min(sep, starts, gid, cand)
    cand = _group_min(cat_sid[row], starts, gid, cand)
    first = np.minimum.reduceat(np.where(cand, np.arange(len(det)), len(det)), starts)
    best[det[starts]] = first
    return best, n_cand


def crossmatch(
    index: CatalogueIndex,
    ra,
    dec,
    g=None,
    *,
    radius_arcsec: float | None = None,
    tie_arcsec: float = DEFAULT_TIE_ARCSEC,
    new_sources: bool = True,
) -> MatchResult:
    """Cross-match detections (ra, dec in deg, optional G) with the indexed catalogue.

    Principal match: the nearest catalogue source within the radius (default: the index's); with G,
    among the candidates at most tie_arcsec further than the nearest, the one with the smallest
    |G_det - G_cat| (candidates without G last); remaining ties by smaller separation, then smaller id.
    With new_sources, unmatched detections are grouped friends-of-friends within the radius and each
    group gets a deterministic new source id (new_source_ids, avoiding the ids already in the index).
    """
    ra = np.asarray(ra, dtype=float).ravel()
    dec = np.asarray(dec, dtype=float).ravel()
    n = len(ra)
    g_det = None if g is None else np.asarray(g, dtype=float).ravel()
    if len(dec) != n or (g_det is not None and len(g_det) != n):
        raise ValueError("ra, dec and g must have the same length")
    r = index.radius_arcsec if radius_arcsec is None else float(radius_arcsec)
    ok = np.isfinite(ra) & np.isfinite(dec)
    xyz = radec_to_xyz(np.where(ok, ra, 0.0), np.where(ok, dec, 0.0)).reshape(-1, 3)
    good = np.flatnonzero(ok)
    det, row, sep = index.pairs(xyz[good], r)
    det = good[det]
    best, n_cand = _principal(det, row, sep, n, index.source_id, index.g, g_det, tie_arcsec)
    has = best >= 0
    source_id = np.full(n, -1, np.int64)
    sep_best = np.full(n, np.nan)
    source_id[has] = index.source_id[row[best[has]]]
    sep_best[has] = sep[best[has]]
    # ambiguous candidate lists
    amb = n_cand[det] > 1
    a_det, a_row, a_sep = det[amb], row[amb], sep[amb]
    a_sid = index.source_id[a_row]
    o = np.lexsort((a_sid, a_sep, a_det))
    pmask = np.zeros(len(det), bool)
    pmask[best[has]] = True
    principal = pmask[amb][o]
    ambiguous = {
        "detection": a_det[o],
        "source_id": a_sid[o],
        "sep_arcsec": a_sep[o],
        "principal": principal,
    }
    unmatched = np.flatnonzero(ok & ~has)
    result = MatchResult(
        source_id=source_id,
        sep_arcsec=sep_best,
        n_candidates=n_cand,
        ambiguous=ambiguous,
        unmatched=unmatched,
        invalid=np.flatnonzero(~ok),
        new_source_id=np.full(n, -1, np.int64),
        new_sources=_empty_new(),
    )
    if new_sources and len(unmatched):
        _assign_new_sources(result, xyz, g_det, r, index.source_id)
    return result


def _empty_new() -> dict[str, np.ndarray]:
    return {
        "source_id": np.zeros(0, np.int64),
        "ra": np.zeros(0),
        "dec": np.zeros(0),
        "g": np.zeros(0),
        "n_detections": np.zeros(0, np.int64),
    }


def _assign_new_sources(result: MatchResult, xyz, g_det, radius_arcsec, existing) -> None:
    um = result.unmatched
    u = xyz[um]
    g = np.full(len(um), np.nan) if g_det is None else g_det[um]
    # canonical order of the detections' content: groups, sums and ids do not depend on input order
    canon = np.lexsort((np.where(np.isfinite(g), g, np.inf), u[:, 2], u[:, 1], u[:, 0]))
    u, g, um = u[canon], g[canon], um[canon]
    labels = group_friends_of_friends(u, radius_arcsec)
    o = np.argsort(labels, kind="stable")  # members stay in canonical order within a group
    lab = labels[o]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    mean = np.add.reduceat(u[o], starts, axis=0)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    n_det = np.diff(np.r_[starts, len(o)])
    gf = np.isfinite(g[o])
    g_sum = np.add.reduceat(np.where(gf, g[o], 0.0), starts)
    g_n = np.add.reduceat(gf.astype(np.int64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        g_mean = np.where(g_n > 0, g_sum / np.maximum(g_n, 1), np.nan)
    ids = new_source_ids(mean, existing)
    result.new_source_id[um] = ids[labels]
    ra, dec = xyz_to_radec(mean)
    order = np.argsort(ids, kind="stable")
    result.new_sources = {
        "source_id": ids[order],
        "ra": ra[order],
        "dec": dec[order],
        "g": g_mean[order],
        "n_detections": n_det[order],
    }


def add_new_sources(index: CatalogueIndex, result: MatchResult) -> CatalogueIndex:
    """The index with the result's new sources added, so that later detections match them."""
    ns = result.new_sources
    if len(ns["source_id"]) == 0:
        return index
    return index.extended(ns["source_id"], ns["ra"], ns["dec"], ns["g"])


def crossmatch_and_extend(index: CatalogueIndex, ra, dec, g=None, **kw) -> tuple[MatchResult, CatalogueIndex]:
    """crossmatch, then add_new_sources: the day-by-day use of the working catalogue."""
    result = crossmatch(index, ra, dec, g, **kw)
    return result, add_new_sources(index, result)
