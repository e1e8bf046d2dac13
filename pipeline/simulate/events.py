"""Photometric events injected into the simulated sky, and the quiet-star scatter.

Events are keyed on (seed, source, 100-day bin): whether a source has an event in a bin, its kind and its
parameters are hashes of those keys, so any time window of any run sees the same events. Each event
changes the source's flux as F(t) = F0 * factor(t) + added(t):

- microlensing (Paczynski): factor A(u) = (u^2 + 2) / (u sqrt(u^2 + 4)), u^2 = u0^2 + ((t - t0) / tE)^2
- supernova: added flux with a Bazin profile exp(-x/tau_fall) / (1 + exp(-x/tau_rise)), peak G_peak
- outburst (dwarf-nova like): factor 10^(0.4 A b(t)) with a fast Bazin rise and a decline of days
- fading (R CrB like): factor 10^(-0.4 A b(t)), a drop over weeks and a slow recovery
- new_source: a source absent from every catalogue (F0 = 0) that appears with a supernova-like light curve

Quiet stars scatter per transit so that the total per-transit error (this scatter plus the photon noise of
the windows) follows the Hodgkin et al. 2021 error model (pipeline.instrument.hodgkin_sigma_g).
"""

from __future__ import annotations

import healpy as hp
import numpy as np

from pipeline import instrument
from pipeline.simulate.hashing import hash_keys, uniform

DAY = 86400.0
EVENT_BIN_S = 100 * DAY
BIN_OFFSETS = (-3, -2, -1, 0, 1, 2)  # bins whose events can reach a given time
KINDS = ("none", "microlensing", "supernova", "outburst", "fading", "new_source")
KIND_CODE = {k: i for i, k in enumerate(KINDS)}
DEFAULT_EVENT_RATE = 5e-4  # probability that a source has an event in a 100-day bin
DEFAULT_NEW_SOURCE_DENSITY = 10.0  # new sources per deg^2 per 100 days at scale 1 ... times the scale
MIN_EVENT_DMAG = 0.01  # transits changed less than this are not attributed to the event

_STREAM_EVENT, _STREAM_KIND, _STREAM_T0, _STREAM_P1, _STREAM_P2, _STREAM_P3 = range(101, 107)


def _bazin(x: np.ndarray, tau_rise: np.ndarray, tau_fall: np.ndarray) -> np.ndarray:
    """Bazin profile normalised to 1 at its peak; x = t - t0 in days, t0 at the peak."""
    x_peak = tau_rise * np.log((tau_fall - tau_rise) / tau_rise)
    xx = x + x_peak
    with np.errstate(over="ignore"):
        b = np.exp(-xx / tau_fall) / (1.0 + np.exp(-xx / tau_rise))
        b_peak = np.exp(-x_peak / tau_fall) / (1.0 + np.exp(-x_peak / tau_rise))
    return np.nan_to_num(b / b_peak)


def paczynski(t_days: np.ndarray, t0_days: np.ndarray, te_days: np.ndarray, u0: np.ndarray) -> np.ndarray:
    u2 = u0**2 + ((t_days - t0_days) / te_days) ** 2
    return (u2 + 2.0) / np.sqrt(u2 * (u2 + 4.0))


def event_parameters(seed: int, source_id: np.ndarray, ebin: np.ndarray, g0: np.ndarray) -> dict:
    """Kind and parameters of the events keyed (seed, source_id, bin), vectorised. Times in days."""
    kind = 1 + np.floor(uniform(seed, source_id, ebin, _STREAM_KIND) * 4).astype(np.int64)
    kind = np.where(np.isfinite(g0), kind, KIND_CODE["new_source"])
    t0 = (ebin + uniform(seed, source_id, ebin, _STREAM_T0)) * (EVENT_BIN_S / DAY)
    p1 = uniform(seed, source_id, ebin, _STREAM_P1)
    p2 = uniform(seed, source_id, ebin, _STREAM_P2)
    p3 = uniform(seed, source_id, ebin, _STREAM_P3)
    return {
        "kind": kind,
        "t0_days": t0,
        "te_days": 10.0 + 50.0 * p1,  # microlensing Einstein time
        "u0": 0.05 + 0.6 * p2,  # microlensing impact parameter
        "peak_g": 15.5 + 3.5 * p1,  # supernova / new source peak magnitude
        "amplitude_mag": np.where(kind == KIND_CODE["fading"], 2.0 + 4.0 * p1, 1.5 + 3.5 * p1),
        "tau_rise_days": np.select(
            [kind == KIND_CODE["outburst"], kind == KIND_CODE["fading"]],
            [0.5 + p3, 3.0 + 4.0 * p3],
            3.0 + 4.0 * p3,
        ),
        "tau_fall_days": np.select(
            [kind == KIND_CODE["outburst"], kind == KIND_CODE["fading"]],
            [3.0 + 6.0 * p2, 60.0 + 40.0 * p2],
            20.0 + 20.0 * p2,
        ),
    }


def event_id_of(seed: int, source_id: np.ndarray, ebin: np.ndarray) -> np.ndarray:
    """A positive 63-bit identifier of the event keyed (seed, source, bin)."""
    return (hash_keys(seed, source_id, ebin, 0xE7) >> np.uint64(1)).astype(np.int64)


def _flux_terms(p: dict, t_days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(multiplicative factor, added flux in e-/s) of events p at times t."""
    k = p["kind"]
    x = t_days - p["t0_days"]
    factor = np.ones_like(t_days)
    added = np.zeros_like(t_days)
    ml = k == KIND_CODE["microlensing"]
    factor[ml] = paczynski(t_days[ml], p["t0_days"][ml], p["te_days"][ml], p["u0"][ml])
    b = _bazin(x, p["tau_rise_days"], p["tau_fall_days"])
    ob = k == KIND_CODE["outburst"]
    factor[ob] = 10.0 ** (0.4 * p["amplitude_mag"][ob] * b[ob])
    fd = k == KIND_CODE["fading"]
    factor[fd] = 10.0 ** (-0.4 * p["amplitude_mag"][fd] * b[fd])
    sn = (k == KIND_CODE["supernova"]) | (k == KIND_CODE["new_source"])
    added[sn] = instrument.flux_e_s(p["peak_g"][sn]) * b[sn]
    return factor, added


def apply_events(
    seed: int, rate: float, source_id: np.ndarray, g0: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True flux (e-/s) of each transit with the events of its source -> (flux, event_id, event_bin).

    g0 is the quiet magnitude (inf for new sources); t mission seconds. event_id is 0 where no event
    changes the transit by MIN_EVENT_DMAG or more; otherwise the id of the strongest one.
    """
    source_id = np.asarray(source_id, dtype=np.int64)
    t = np.asarray(t, dtype=float)
    g0 = np.asarray(g0, dtype=float)
    quiet = np.isfinite(g0)
    f0 = np.where(quiet, instrument.flux_e_s(np.where(quiet, g0, 30.0)), 0.0)
    t_days = t / DAY
    base_bin = np.floor(t / EVENT_BIN_S).astype(np.int64)
    factor = np.ones_like(t)
    added = np.zeros_like(t)
    best = np.zeros_like(t)
    best_id = np.zeros(len(t), dtype=np.int64)
    best_bin = np.zeros(len(t), dtype=np.int64)
    for off in BIN_OFFSETS:
        ebin = base_bin + off
        # catalogue sources: a hashed chance per bin; a new source: its one event, in its birth bin
        has = np.where(quiet, uniform(seed, source_id, ebin, _STREAM_EVENT) < rate, off == 0)
        if not has.any():
            continue
        idx = np.flatnonzero(has)
        eb = np.where(quiet[idx], ebin[idx], new_source_bin(source_id[idx]))
        p = event_parameters(seed, source_id[idx], eb, g0[idx])
        fac, add = _flux_terms(p, t_days[idx])
        factor[idx] *= fac
        added[idx] += add
        ref = np.maximum(f0[idx], 1e-3)
        strength = np.abs(np.log10((f0[idx] * fac + add) / ref))
        stronger = strength > best[idx]
        best[idx[stronger]] = strength[stronger]
        best_id[idx[stronger]] = event_id_of(seed, source_id[idx[stronger]], eb[stronger])
        best_bin[idx[stronger]] = eb[stronger]
    flux = f0 * factor + added
    attributed = (best * 2.5 >= MIN_EVENT_DMAG) | ~quiet
    return flux, np.where(attributed, best_id, 0), np.where(attributed, best_bin, 0)


def quiet_scatter_sigma(g: np.ndarray, photon_sigma_mag: np.ndarray) -> np.ndarray:
    """Extra per-transit scatter (mag) so that it and the photon noise add up to Hodgkin's sigma(G)."""
    total = instrument.hodgkin_sigma_g(g)
    return np.sqrt(np.clip(total**2 - photon_sigma_mag**2, 0.0, None))


# --- new sources: a population absent from the catalogues -------------------------------------------------
_NEW_FLAG = (1 << 34) | (1 << 33)


def new_source_bin(source_id: np.ndarray) -> np.ndarray:
    """The 100-day bin a new source was born in (encoded in its id)."""
    return ((np.asarray(source_id) & ((1 << 33) - 1)) >> 12).astype(np.int64) - (1 << 20)


def new_sources(seed: int, scale: float, density: float, bins: np.ndarray) -> dict:
    """New sources born in the given 100-day bins, all sky (deterministic per bin, whatever the run).

    Poisson(density * scale * 41,253 deg^2) per bin, uniform on the sphere. Arrays: source_id, ra, dec,
    x, y, z. Ids follow Gaia's convention (level-12 pixel * 2^35) with bits 34 and 33 set and the birth
    bin in bits 12..32, so new_source_bin() recovers the bin.
    """
    sid, ra, dec = [], [], []
    for b in np.asarray(bins, dtype=np.int64):
        rng = np.random.default_rng([seed, 0x4E57, int(b) + (1 << 20)])
        n = min(int(rng.poisson(density * scale * 4.0 * np.pi * (180.0 / np.pi) ** 2)), 4095)
        nest29 = rng.integers(0, 12 << 58, size=n, dtype=np.int64)  # uniform over equal-area cells
        r, d = hp.pix2ang(1 << 29, nest29, nest=True, lonlat=True)
        sid.append(((nest29 >> 34) << 35) | _NEW_FLAG | ((int(b) + (1 << 20)) << 12) | np.arange(n))
        ra.append(r)
        dec.append(d)
    cat = {
        "source_id": np.concatenate(sid).astype(np.int64) if sid else np.zeros(0, np.int64),
        "ra": np.concatenate(ra) if ra else np.zeros(0),
        "dec": np.concatenate(dec) if dec else np.zeros(0),
    }
    r, d = np.deg2rad(cat["ra"]), np.deg2rad(cat["dec"])
    cat["x"], cat["y"], cat["z"] = np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)
    return cat
