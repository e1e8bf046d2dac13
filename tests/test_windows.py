import numpy as np

from pipeline import instrument as ins
from pipeline.simulate.payload import Payload
from pipeline.simulate.windows import observe

T = 2.1e8


def _observe(g, n=4000, seed=1):
    rng = np.random.default_rng(seed)
    t = T + np.sort(rng.uniform(0, 600, n))
    return observe(rng, Payload(1, []), t, rng.integers(0, 7, n), np.full(n, ins.flux_e_s(g))), t


def test_window_sums_recover_the_flux_of_a_quiet_star():
    obs, _ = _observe(15.0)
    assert (obs["n_samples"] == 18).all() and (obs["gate"] == 0).all() and obs["detected"].all()
    e = (obs["samples"][:, :, :18].astype(float) - ins.NOMINAL_BIAS_ADU) * ins.GAIN_E_PER_ADU
    # the per-CCD bias differs by up to 15 ADU from nominal; estimate it from the window edges
    edge = np.concatenate([e[:, :, :3], e[:, :, -3:]], axis=2).mean(axis=2, keepdims=True)
    total = (e - edge).sum(axis=2).mean()
    assert abs(total / ins.flux_e_per_ccd(15.0) - 1) < 0.02


def test_faint_stars_get_short_windows_and_too_faint_ones_are_not_detected():
    obs, _ = _observe(19.0)
    assert (obs["n_samples"][obs["detected"]] == 12).all()
    assert (obs["samples"][:, :, 12:] == 0).all()
    obs, _ = _observe(21.5)
    assert obs["detected"].mean() < 0.01


def test_bright_stars_are_gated_and_the_brightest_saturate():
    obs, _ = _observe(9.0, n=200)
    assert (obs["gate"] > 0).all() and not obs["saturated"].any()
    assert obs["samples"].max() < ins.ADC_MAX
    obs, _ = _observe(3.0, n=50)
    assert obs["saturated"].all() and (obs["samples"] == ins.ADC_MAX).any()


def test_the_image_sits_near_the_window_centre_and_moves_with_the_tdi_clock():
    obs, _ = _observe(16.5)
    x0 = obs["x0"]
    assert np.abs(x0[:, 0] - 6.0).max() < 1.5
    # the windows follow the crossing: every AF window sees the image at the same place
    assert np.abs(x0 - x0[:, :1]).max() < 1e-3
    peak = obs["samples"].argmax(axis=2)
    assert np.abs(peak - np.floor(x0)).mean() < 0.6
