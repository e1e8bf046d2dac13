import numpy as np
import pytest

from pipeline import instrument as ins
from pipeline.lsf import lsf_fractions
from pipeline.mission_time import obt_of
from pipeline.reduce import image_params as ip
from pipeline.simulate.payload import Anomaly, Payload
from pipeline.simulate.windows import observe

T = 2.1e8
K = np.arange(1, ins.N_AF + 1)


def _simulate(g_lo, g_hi, n, seed=7, anomalies=()):
    """Transits of stars with G uniform in [g_lo, g_hi) through the simulator's own window model.

    Returns (obs, known bias (n, 9) ADU from the payload at the AF crossings, t, g, payload).
    """
    rng = np.random.default_rng(seed)
    payload = Payload(seed, list(anomalies))
    t = T + np.sort(rng.uniform(0.0, 600.0, n))
    row = rng.integers(0, ins.N_ROWS, n)
    g = rng.uniform(g_lo, g_hi, n)
    obs = observe(rng, payload, t, row, ins.flux_e_s(g))
    assert obs["detected"].all()
    obs["row"] = row
    return obs, _bias(payload, t, row), t, g


def _bias(payload, t, row):
    t_k = t[:, None] + (K - ins.REFERENCE_COLUMN) * ins.CCD_CROSSING_S
    b = payload.bias(t_k.ravel()).reshape(len(t), ins.N_AF, ins.N_ROWS, ins.N_CCD_COLUMNS)
    return b[np.arange(len(t))[:, None], np.arange(ins.N_AF)[None, :], row[:, None], K[None, :]]


def _fit(obs, bias, sigma=None):
    sigma = obs["lsf_sigma"] if sigma is None else sigma
    return ip.fit_windows(obs["samples"], obs["n_samples"], bias, obs["gate"], sigma)


def _gated(obs):
    return 2.0 ** -obs["gate"][:, None].astype(float)


@pytest.mark.parametrize("g_lo", [6, 8, 10, 12, 14, 16, 18])
def test_flux_and_centroid_errors_reach_the_cramer_rao_bound(g_lo):
    obs, bias, _, _ = _simulate(g_lo, g_lo + 2, 300, seed=100 + g_lo)
    fit = _fit(obs, bias)
    assert (fit["flags"] == 0).all()
    scale = _gated(obs)  # compare in recorded (gated) electrons, like the truth flux_ccd
    crb_f, crb_x, _ = ip.cramer_rao(
        obs["flux_ccd"][:, None] / scale,
        obs["x0"],
        obs["background"],
        obs["lsf_sigma"],
        obs["n_samples"][:, None],
        obs["gate"][:, None],
    )
    df = fit["flux"] * scale - obs["flux_ccd"][:, None]
    dx = fit["x0"] - obs["x0"]
    rms_f = np.sqrt(np.mean((crb_f * scale) ** 2))
    rms_x = np.sqrt(np.mean(crb_x**2))
    ratio_f, ratio_x = df.std() / rms_f, dx.std() / rms_x
    # efficient: at the bound, within 20% (and not below it by more than the sampling noise of 2700 windows)
    assert 0.85 < ratio_f <= 1.2, ratio_f
    assert 0.85 < ratio_x <= 1.2, ratio_x
    # unbiased, and the reported errors are the bound at the fitted values
    assert abs(df.mean()) < 0.1 * rms_f and abs(dx.mean()) < 0.1 * rms_x
    assert np.median(fit["flux_err"] * scale / (crb_f * scale)) == pytest.approx(1.0, abs=0.05)
    assert np.median(fit["x0_err"] / crb_x) == pytest.approx(1.0, abs=0.05)
    assert np.mean(fit["chi2"]) == pytest.approx(1.0, abs=0.05)


def test_the_cramer_rao_bound_follows_the_photon_and_readout_limits():
    # bright, no background: flux error -> sqrt(F) (x 2^gate); centroid error -> about sigma / sqrt(F)
    f = 1e7
    sf, sx, _ = ip.cramer_rao(f, 9.3, 0.0, 0.9, 18, 0)
    assert sf == pytest.approx(np.sqrt(f), rel=0.02)
    assert 0.9 / np.sqrt(f) < sx < 1.3 * 0.9 / np.sqrt(f)
    sf_gated, _, _ = ip.cramer_rao(f, 9.3, 0.0, 0.9, 18, 4)
    assert sf_gated == pytest.approx(np.sqrt(f / 16) * 16, rel=0.02)
    # faint: read noise and background dominate, and a shorter window loses little
    sf18, _, sb18 = ip.cramer_rao(800.0, 6.0, 12.0, 0.9, 18, 0)
    sf12, _, sb12 = ip.cramer_rao(800.0, 6.0, 12.0, 0.9, 12, 0)
    assert sf18 > np.sqrt(800.0) and sf12 > sf18 and sb12 > sb18
    assert np.isnan(ip.cramer_rao(np.nan, 6.0, 12.0, 0.9, 12, 0)[0])


def test_saturated_stars_are_flagged_and_their_saturated_samples_left_out():
    obs, bias, _, _ = _simulate(2.9, 3.1, 40)
    assert obs["saturated"].all()
    fit = _fit(obs, bias)
    n_sat = (obs["samples"] >= ins.ADC_MAX).sum(axis=2)
    assert ((fit["flags"] & ip.FLAG_SATURATED) != 0).all()
    assert (fit["n_valid"] == obs["n_samples"][:, None] - n_sat).all()
    tr = ip.combine_transit(fit)
    assert ((tr["flags"] & ip.FLAG_SATURATED) != 0).all()
    # the unsaturated wings still give the flux (the Gaussian model is exact in the simulator)
    truth = obs["flux_ccd"][:, None] / _gated(obs)
    assert np.median(np.abs(fit["flux"] / truth - 1)) < 0.01


def test_gated_bright_stars_are_fitted_with_the_gate_correction():
    obs, bias, _, g = _simulate(6.0, 12.0, 400)
    assert (obs["gate"] > 0).all() and len(np.unique(obs["gate"])) >= 5 and not obs["saturated"].any()
    fit = _fit(obs, bias)
    assert (fit["flags"] == 0).all()
    truth = ins.flux_e_per_ccd(g)[:, None]  # ungated: the gate correction must bring it back
    pull = (fit["flux"] - truth) / fit["flux_err"]
    assert abs(pull.mean()) < 0.1 and 0.85 < pull.std() < 1.15
    tr = ip.combine_transit(fit, obs["obt_af1"])
    gpull = (tr["g_mag"] - g) / tr["g_mag_err"]
    assert (tr["n_good"] == ins.N_AF).all() and tr["flags"].max() == 0
    assert abs(gpull.mean()) < 0.15 and 0.8 < gpull.std() < 1.2
    assert np.abs(tr["g_mag"] - g).max() < 0.01


def test_transit_flux_magnitude_and_centroid_times():
    obs, bias, t, g = _simulate(17.0, 20.0, 400)
    tr = ip.combine_transit(_fit(obs, bias), obs["obt_af1"], np.zeros((len(t), ins.N_AF)))
    flux_true = ins.flux_e_s(g)
    pull = (tr["flux_e_s"] - flux_true) / tr["flux_e_s_err"]
    assert abs(pull.mean()) < 0.15 and 0.85 < pull.std() < 1.15
    assert np.nanmean(tr["flux_chi2"]) == pytest.approx(1.0, abs=0.1)
    gpull = (tr["g_mag"] - g) / tr["g_mag_err"]
    assert abs(np.median(gpull)) < 0.15
    # the OBT of each window's centroid is the true AF crossing time, to the centroid error
    t_k = t[:, None] + (K - ins.REFERENCE_COLUMN) * ins.CCD_CROSSING_S
    fit = _fit(obs, bias)
    tpull = (tr["obt_window"] - obt_of(t_k)) / (fit["x0_err"] * ins.TDI_PERIOD_S)
    assert np.abs(tpull.mean()) < 0.1 and 0.85 < tpull.std() < 1.15
    mean_true = obt_of(t_k).mean(axis=1)
    assert np.abs(tr["obt_mean"] - mean_true).max() < 0.2 * ins.TDI_PERIOD_S
    # an AL offset of window k shifts its start and so its centroid time by that many TDI periods
    off = np.zeros((len(t), ins.N_AF))
    off[:, 4] = 3
    tr2 = ip.combine_transit(fit, obs["obt_af1"], off)
    assert np.allclose(tr2["obt_window"][:, 4] - tr["obt_window"][:, 4], 3 * ins.TDI_PERIOD_S)


def test_a_bias_jump_is_absorbed_when_known_and_shows_as_background_when_not():
    jump = Anomaly("bias_jump", T - 3600.0, np.inf, -1, 3, 40.0)  # AF3 of every row, +40 ADU
    obs, bias_known, t, _ = _simulate(14.0, 16.0, 300, anomalies=[jump])
    bias_stale = _bias(Payload(7, []), t, obs["row"])
    assert np.allclose(bias_known - bias_stale, np.where(K == 3, 40.0, 0.0))
    right, wrong = _fit(obs, bias_known), _fit(obs, bias_stale)
    db_right = right["background"] - obs["background"]
    assert np.abs(db_right.mean(axis=0)).max() < 1.0  # e- per sample, all nine CCDs
    shift = wrong["background"] - right["background"]
    assert shift[:, 2].mean() == pytest.approx(40.0 * ins.GAIN_E_PER_ADU, abs=2.0)
    assert np.abs(np.delete(shift, 2, axis=1)).max() < 1e-6
    # flux and centroid are unaffected beyond a small fraction of their errors
    assert np.abs((wrong["flux"] - right["flux"]) / right["flux_err"])[:, 2].mean() < 0.2
    assert np.abs((wrong["x0"] - right["x0"]) / right["x0_err"])[:, 2].mean() < 0.2
    assert (wrong["flags"] == 0).all() and (right["flags"] == 0).all()


@pytest.mark.parametrize("drift", [0.0, 0.4])
def test_the_lsf_width_estimator_recovers_nominal_and_defocused_widths(drift):
    # a focus drift that has (nearly) reached its full 40% widening at the observed times
    an = [Anomaly("focus_drift", T - 30 * 86400.0, T + 700.0, -1, -1, drift)] if drift else []
    obs, bias, _, _ = _simulate(10.0, 17.0, 200, anomalies=an)
    expected = ins.NOMINAL_LSF_SIGMA_PX * (1 + drift)
    assert np.abs(obs["lsf_sigma"] / expected - 1).max() < 0.002
    est = ip.estimate_lsf_width(obs["samples"], obs["n_samples"], bias, obs["gate"])
    assert est["n_used"] > 500
    assert est["median"] == pytest.approx(expected, rel=0.02)
    assert est["median_err"] < 0.005 * expected
    used = est["used"]
    pull = (est["sigma"][used] - obs["lsf_sigma"][used]) / est["sigma_err"][used]
    assert abs(np.median(pull)) < 0.2
    # faint windows are not used
    f_rec = est["used"] & (obs["flux_ccd"][:, None] < 0.5 * ip.LSF_MIN_FLUX_E)
    assert not f_rec.any()


def _synthetic(flux, x0, n=50, ns=12, b=12.0, seed=3):
    rng = np.random.default_rng(seed)
    lsf = lsf_fractions(np.full(n * ins.N_AF, float(x0)), 0.9, 18).reshape(n, ins.N_AF, 18)
    mean = flux * lsf + b
    counts = rng.poisson(np.maximum(mean, 0)) + np.minimum(mean, 0) + 5.0 * rng.standard_normal(lsf.shape)
    s = np.clip(np.round(counts / ins.GAIN_E_PER_ADU + 1500.0), 0, ins.ADC_MAX)
    s[:, :, ns:] = 0
    return s.astype(np.uint16), np.full(n, ns), np.full((n, ins.N_AF), 1500.0), np.zeros(n, np.int64)


def test_failed_fits_and_missing_windows_are_flagged():
    # windows without a star: many fits fail (no convergence, flux <= 0, centroid outside), and the
    # others find only an insignificant noise bump
    fit = ip.fit_windows(*_synthetic(0.0, 6.0, n=100), 0.9)
    failed = (fit["flags"] & ip.FLAG_FAILED) != 0
    assert failed.mean() > 0.15
    nonpos = fit["flux"] <= 0
    both = ip.FLAG_FAILED | ip.FLAG_NONPOSITIVE_FLUX
    assert nonpos.any() and (fit["flags"][nonpos] & both == both).all()
    assert not (fit["flags"][~nonpos] & ip.FLAG_NONPOSITIVE_FLUX).any()
    assert (fit["flux"] / fit["flux_err"])[~failed].max() < 4.5
    reasons = ip.FLAG_NOT_CONVERGED | ip.FLAG_NONPOSITIVE_FLUX | ip.FLAG_CENTROID_OUTSIDE
    assert ((fit["flags"][failed] & reasons) != 0).all() and ((fit["flags"][~failed] & reasons) == 0).all()
    # a bright image centred outside the window
    fit = ip.fit_windows(*_synthetic(2e5, -0.8), 0.9)
    assert ((fit["flags"] & ip.FLAG_CENTROID_OUTSIDE) != 0).all()
    assert ((fit["flags"] & ip.FLAG_FAILED) != 0).all()
    # too few usable samples (most of the window saturated), and absent windows
    s, ns, bias, gate = _synthetic(2e4, 6.0)
    s[0, 0, 1:10] = ins.ADC_MAX
    s[1, :, :] = 0
    s[2, 4, :] = 0
    fit = ip.fit_windows(s, ns, bias, gate, 0.9)
    assert fit["flags"][0, 0] == ip.FLAG_SATURATED | ip.FLAG_FAILED | ip.FLAG_FEW_SAMPLES
    assert np.isnan(fit["flux"][0, 0])
    assert (fit["flags"][1] == ip.FLAG_UNUSED).all() and fit["flags"][2, 4] == ip.FLAG_UNUSED
    assert (np.delete(fit["flags"][2:], 4, axis=1) == 0).all() and (fit["flags"][0, 1:] == 0).all()
    tr = ip.combine_transit(fit, np.zeros(len(ns)))
    assert list(tr["n_good"][:3]) == [8, 0, 8]
    assert tr["flags"][1] == ip.FLAG_UNUSED | ip.FLAG_NO_GOOD_WINDOWS
    assert np.isnan(tr["flux_e_s"][1]) and np.isnan(tr["obt_mean"][1]) and np.isfinite(tr["obt_mean"][2])
    assert np.isnan(tr["obt_window"][2, 4])


def test_bad_input_raises_a_clear_value_error():
    s, ns, bias, gate = _synthetic(1e4, 6.0, n=4)
    with pytest.raises(ValueError, match="samples_adu has shape"):
        ip.fit_windows(s[:, :, :12], ns, bias, gate)
    with pytest.raises(ValueError, match="samples_adu has shape"):
        ip.fit_windows(s[0], ns, bias, gate)
    with pytest.raises(ValueError, match="n_samples must be 12 or 18"):
        ip.fit_windows(s, np.array([12, 12, 13, 12]), bias, gate)
    with pytest.raises(ValueError, match="n_samples has shape"):
        ip.fit_windows(s, ns[:3], bias, gate)
    with pytest.raises(ValueError, match="bias_adu has shape"):
        ip.fit_windows(s, ns, bias[:, :8], gate)
    with pytest.raises(ValueError, match="gate must lie"):
        ip.fit_windows(s, ns, bias, gate + 11)
    with pytest.raises(ValueError, match="lsf_sigma"):
        ip.fit_windows(s, ns, bias, gate, -0.9)
    with pytest.raises(ValueError, match="lsf_sigma has shape"):
        ip.fit_windows(s, ns, bias, gate, np.full((4, 8), 0.9))
    with pytest.raises(ValueError, match="obt_af1 has shape"):
        ip.combine_transit(ip.fit_windows(s, ns, bias, gate), np.zeros(3))


def test_image_parameters_on_decoded_star_packets_with_housekeeping_bias():
    from pipeline.telemetry.decode import decode_pass
    from pipeline.telemetry.encode import encode_hk_bias, encode_star

    jump = Anomaly("bias_jump", T + 300.0, np.inf, -1, 5, 40.0)
    obs, bias, t, g = _simulate(12.0, 19.0, 120, anomalies=[jump])
    n = len(t)
    payload = Payload(7, [jump])
    stars = encode_star(
        obs["obt_af1"],
        np.arange(n),
        np.zeros(n, np.int64),
        obs["row"],
        obs["mag_class"],
        np.full(n, 1000),
        obs["sm_flux"],
        obs["gate"],
        obs["saturated"].astype(np.uint8),
        np.zeros((n, ins.N_AF), np.int8),
        obs["samples"],
        obs["n_samples"],
    )
    t_hk = T - 60.0 + 30.0 * np.arange(26)
    hk = encode_hk_bias(obt_of(t_hk), np.arange(len(t_hk)), payload.hk_bias(t_hk))
    data = stars.take(np.arange(n)).buf.tobytes() + hk.take(np.arange(len(t_hk))).buf.tobytes()
    dec = decode_pass(data)
    star = dec.star
    assert len(star["obt"]) == n
    bias_hk = ip.window_bias(dec.hk_bias["obt"], dec.hk_bias["bias"], star)
    # the housekeeping bias is the true bias to its 0.2 ADU noise, except across the jump, where the
    # packet before the jump still gives the old level for up to one 30 s cadence
    stale = np.abs(bias_hk - bias) > 5.0
    assert np.abs(bias_hk - bias)[~stale].max() < 1.0
    assert stale.sum() <= 6 and (stale[:, [0, 1, 2, 3, 5, 6, 7, 8]] == 0).all()
    res = ip.image_parameters(star, bias_hk, ins.NOMINAL_LSF_SIGMA_PX)
    win, tr = res["windows"], res["transits"]
    direct = ip.fit_windows(obs["samples"], obs["n_samples"], bias_hk, obs["gate"], 0.9)
    assert np.allclose(win["flux"], direct["flux"]) and np.allclose(win["x0"], direct["x0"])
    assert (tr["flags"] == 0).all() and (tr["n_good"] == ins.N_AF).all()
    assert np.abs((tr["g_mag"] - g) / tr["g_mag_err"]).max() < 5.0
    t_k = t[:, None] + (K - ins.REFERENCE_COLUMN) * ins.CCD_CROSSING_S
    assert np.abs(tr["obt_window"] - obt_of(t_k)).max() < 10 * np.nanmax(win["x0_err"]) * ins.TDI_PERIOD_S
