import numpy as np

from pipeline import instrument as ins
from pipeline.simulate.payload import ANOMALY_KINDS, HK_CADENCE_S, Payload, plan_anomalies

T0 = 2.1e8 - (2.1e8 % 86400)


def test_a_clean_payload_stays_nominal():
    p = Payload(1, [])
    t = T0 + np.arange(0, 86400, HK_CADENCE_S)
    temps = p.hk_thermal(t)
    assert np.abs(temps[:, :7] - 163.0).max() < 0.1
    assert np.allclose(p.lsf_sigma(t, np.zeros(len(t), int)), ins.NOMINAL_LSF_SIGMA_PX)
    bias = p.hk_bias(t)
    assert np.abs(bias - bias[0]).max() < 2.0


def test_anomalies_are_planned_once_per_day_and_show_in_housekeeping_and_science():
    an = plan_anomalies(2, T0, T0 + 2 * 86400, ANOMALY_KINDS)
    assert sorted(a.kind for a in an) == sorted(ANOMALY_KINDS * 2)
    assert an == plan_anomalies(2, T0, T0 + 2 * 86400, ANOMALY_KINDS)
    p = Payload(2, an)
    temp = next(a for a in an if a.kind == "temperature_excursion")
    mid = np.array([(temp.t_start + temp.t_end) / 2])
    assert p.fpa_temperature(mid)[0, temp.row] - 163.0 > 2.5
    assert p.dark_e(mid, np.array([temp.row]))[0] > 5.0
    bias = next(a for a in an if a.kind == "bias_jump")
    before, after = p.bias(np.array([bias.t_start - 60, bias.t_start + 60]))[:, bias.row, bias.column]
    assert after - before == 40.0
    focus = next(a for a in an if a.kind == "focus_drift")
    s = p.lsf_sigma(np.array([focus.t_start - 60, focus.t_end - 60, focus.t_end + 60]), np.zeros(3, int))
    assert s[0] == ins.NOMINAL_LSF_SIGMA_PX and s[1] > 1.3 * s[0] and s[2] == s[0]
