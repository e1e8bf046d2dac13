"""Transit sky positions from window times, AC pixel and the interpolated attitude, against the simulator.

The AF window timing is made as pipeline.simulate.windows does it: the window of AF_k starts on the TDI
grid, x0 is the true image position in it, so the observation time of window k is
obt_af1 + (k - 1) CCD_CROSSING_S + x0_k TDI_PERIOD_S; the attitude is sampled every 4 s from the scanning
law at OBT = obt_of(t); the AC pixel is the rounded true one, as in the star packets.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import instrument as ins
from pipeline.mission_time import obt_of
from pipeline.reduce.attitude import Attitude
from pipeline.reduce.positions import (
    SIGMA_AC_QUANT_MAS,
    field_to_icrs,
    position_angle_deg,
    sky_positions,
    window_directions,
)
from pipeline.simulate.scanlaw import ScanLaw, field_angles_in_frame
from pipeline.simulate.sky import Sky
from pipeline.simulate.transits import find_transits, swept_pixels

MAS = np.deg2rad(1.0 / 3.6e6)
SCAN = ScanLaw()
K = np.arange(1, ins.N_AF + 1)


@pytest.fixture(scope="module")
def sim():
    """Transits of real catalogue positions over 30 min, their window times, attitude samples."""
    t0 = SCAN.t_ref + 86400.0 * 200.3
    t1 = t0 + 1800.0
    src = Sky(3, 0.0005).sources(swept_pixels(SCAN, t0, t1))
    xyz = np.stack([src["x"], src["y"], src["z"]], axis=1)
    tr = find_transits(SCAN, xyz, t0, t1)
    tr = tr[tr["on_ccd"]]
    ta = np.arange(t0 - 60.0, t1 + 60.0, 4.0)
    att = Attitude(obt_of(ta), SCAN.quaternion(ta))
    rng = np.random.default_rng(0)
    tdi = ins.TDI_PERIOD_S
    obt_k = obt_of(tr["t"][:, None] + (K - ins.REFERENCE_COLUMN) * ins.CCD_CROSSING_S)
    n_samples = ins.window_samples(src["g"][tr["idx"]])
    predicted = obt_k[:, 0] + 0.15 * tdi * rng.standard_normal(len(tr))
    obt_af1 = (np.round(predicted / tdi) - n_samples / 2) * tdi
    start = obt_af1[:, None] + (K - 1) * ins.CCD_CROSSING_S
    x0 = (obt_k - start) / tdi
    ac = np.clip(np.round(tr["ac_pixel"]), 0, ins.CCD_AC_PIXELS - 1)
    return {
        "tr": tr,
        "u": xyz[tr["idx"]],
        "att": att,
        "ta": ta,
        "start": start,
        "x0": x0,
        "ac": ac,
        "clipped": ac != np.round(tr["ac_pixel"]),
    }


def _al_ac_error_mas(u_est, u_true, t):
    """(AL, AC) components of u_est - u_true (mas); AL along the scan direction z x u at times t."""
    _, _, z = SCAN.frame(t)
    e_al = np.cross(z, u_true)
    e_al /= np.linalg.norm(e_al, axis=1, keepdims=True)
    e_ac = np.cross(u_true, e_al)
    d = u_est - u_true
    return (d * e_al).sum(axis=1) / MAS, (d * e_ac).sum(axis=1) / MAS


def _positions(sim, obs, **kw):
    tr = sim["tr"]
    return sky_positions(sim["att"], obs, tr["fov"], tr["row"], sim["ac"], **kw)


def test_field_to_icrs_inverts_field_angles():
    rng = np.random.default_rng(5)
    t = SCAN.t_ref + rng.uniform(0, 1e7, 500)
    x, y, z = SCAN.frame(t)
    fov = rng.integers(0, 2, 500)
    eta, zeta = rng.uniform(-1, 1, 500), rng.uniform(-0.35, 0.35, 500)
    u = field_to_icrs(x, y, z, fov, eta, zeta)
    eta2, zeta2 = field_angles_in_frame(u, x, y, z, fov)
    assert np.abs(eta2 - eta).max() * 3.6e6 < 1e-6 and np.abs(zeta2 - zeta).max() * 3.6e6 < 1e-6


def test_position_angle_convention():
    u = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    d = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])  # north, east, west
    assert np.allclose(position_angle_deg(u, d), [0.0, 90.0, 270.0])


def test_positions_recover_truth(sim):
    tr = sim["tr"]
    assert len(tr) > 500
    obs = sim["start"] + sim["x0"] * ins.TDI_PERIOD_S
    p = _positions(sim, obs)
    assert p["valid"].all() and (p["n_windows"] == 9).all()
    al, ac = _al_ac_error_mas(p["xyz"], sim["u"], tr["t"])
    assert np.abs(al).max() < 1.0  # measured: 0.23 mas max, 0.013 mas rms
    # AC: exactly the rounding of the AC pixel (except at the row edges, where the packet clips it)
    quant = (sim["ac"] - tr["ac_pixel"]) * ins.PIXEL_AC_MAS
    ok = ~sim["clipped"]
    assert np.abs(ac - quant)[ok].max() < 0.5  # measured 0.11 mas
    assert np.abs(ac[ok]).max() < ins.PIXEL_AC_MAS / 2 + 0.5
    assert 0.9 < ac.std() / SIGMA_AC_QUANT_MAS < 1.1
    assert np.allclose(p["sigma_ac_mas"], SIGMA_AC_QUANT_MAS)
    # ra/dec agree with xyz; the epoch is the AF5 crossing
    assert np.allclose(np.cos(np.deg2rad(p["dec"])) * np.cos(np.deg2rad(p["ra"])), p["xyz"][:, 0])
    assert np.abs(p["obt_ref"] - obt_of(tr["t"])).max() < 1e-6
    # per-window AL scatter: only the simulator's uniform-rate timing (linear in k, <= 15 mas)
    assert np.nanmax(p["al_scatter_mas"]) < 20.0
    # scan position angle: direction of z x u from the scanning law
    _, _, z = SCAN.frame(tr["t"])
    w = np.cross(z, sim["u"])
    pa = position_angle_deg(sim["u"], w)
    dpa = (p["scan_pa_deg"] - pa + 180.0) % 360.0 - 180.0
    assert np.abs(dpa).max() < 1e-4


def test_positions_with_centroid_noise(sim):
    rng = np.random.default_rng(8)
    sigma_px = 0.3  # 18 mas per window
    x0 = sim["x0"] + sigma_px * rng.standard_normal(sim["x0"].shape)
    p = _positions(sim, sim["start"] + x0 * ins.TDI_PERIOD_S)
    al, _ = _al_ac_error_mas(p["xyz"], sim["u"], sim["tr"]["t"])
    expected = sigma_px * ins.PIXEL_AL_MAS / 3.0
    assert 0.85 < al.std() / expected < 1.15
    z = al / p["sigma_al_mas"]
    assert 0.7 < z.std() < 1.3  # the scatter-based error describes the AL error


def test_positions_missing_windows_and_reference(sim):
    obs = sim["start"] + sim["x0"] * ins.TDI_PERIOD_S
    obs[:, :4] = np.nan  # AF1-AF4 lost
    obs[::2, 4] = np.nan  # and AF5 (the AC reference) for every other transit
    p = _positions(sim, obs)
    assert p["valid"].all() and set(np.unique(p["n_windows"])) == {4, 5}
    al, ac = _al_ac_error_mas(p["xyz"], sim["u"], sim["tr"]["t"])
    # One-sided windows keep the simulator's timing term: it puts the image on AF_k at
    # t + (k - 5) CCD_CROSSING_S, i.e. eta grows at exactly the spin rate, while the true rate differs
    # by zeta x (spin-axis motion) (<= 6 mas per CCD at the FoV edge). The AL error is the mean of the
    # true eta offsets delta_k of the windows used.
    tr = sim["tr"]
    t_k = tr["t"][:, None] + (K - ins.REFERENCE_COLUMN) * ins.CCD_CROSSING_S
    eta, _ = SCAN.field_angles(np.repeat(sim["u"], ins.N_AF, axis=0), t_k.ravel(), np.repeat(tr["fov"], 9))
    delta = (eta.reshape(-1, ins.N_AF) - ins.column_eta_deg(K)) * 3.6e6
    expected = np.nanmean(np.where(np.isfinite(obs), delta, np.nan), axis=1)
    assert np.abs(al - expected).max() < 0.5
    assert np.abs(al).max() < 25.0
    quant = (sim["ac"] - sim["tr"]["ac_pixel"]) * ins.PIXEL_AC_MAS
    assert np.abs(ac - quant)[~sim["clipped"]].max() < 0.5
    # the plain mean of the per-window directions would carry the AC motion of the image (arcsec)
    wd = window_directions(sim["att"], obs, sim["tr"]["fov"], p["zeta_deg"])
    mean = np.nanmean(wd, axis=1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    _, ac_plain = _al_ac_error_mas(mean, sim["u"], sim["tr"]["t"])
    assert np.abs(ac_plain - quant).max() > 300.0


def test_positions_attitude_gap(sim):
    tr = sim["tr"]
    ta = sim["ta"]
    mid = tr["t"][len(tr) // 2]
    keep = np.abs(ta - mid) > 50.0  # 100 s of attitude lost around one transit
    att = Attitude(obt_of(ta[keep]), SCAN.quaternion(ta[keep]))
    obs = sim["start"] + sim["x0"] * ins.TDI_PERIOD_S
    p = sky_positions(att, obs, tr["fov"], tr["row"], sim["ac"])
    hit = np.abs(tr["t"] - mid) < 50.0 - 4 * ins.CCD_CROSSING_S
    assert hit.any() and not p["valid"][hit].any()
    assert np.isnan(p["ra"][hit]).all() and (p["n_windows"][hit] == 0).all()
    far = np.abs(tr["t"] - mid) > 50.0 + 4 * ins.CCD_CROSSING_S
    assert p["valid"][far].all()
    al, _ = _al_ac_error_mas(p["xyz"][far], sim["u"][far], tr["t"][far])
    assert np.abs(al).max() < 1.0
    # partly covered transits: only windows with attitude are used
    part = ~hit & ~far & p["valid"]
    assert (p["n_windows"][~hit & ~far] <= 9).all()
    if part.any():
        assert np.isfinite(p["ra"][part]).all()
