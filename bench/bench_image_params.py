"""Benchmark of the image-parameter fit (prints figures, asserts nothing).

    .venv/bin/python bench/bench_image_params.py [--plot var/bench/image_params_crb.png] [--seed 1]

- fit_windows (vectorised Fisher scoring) in windows per second on a realistic magnitude mix, side by side
  with scipy.optimize.least_squares called per window in a Python loop on a subset, and their ratio;
- per magnitude bin G 6-20: measured error / Cramer-Rao bound for flux and centroid (and background),
  against the simulator's truth, printed as a table and plotted;
- the LSF-width estimator at the nominal and the focus-drifted width.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one core

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.optimize import least_squares  # noqa: E402

from pipeline import instrument as ins  # noqa: E402
from pipeline.lsf import lsf_derivative_x0, lsf_fractions  # noqa: E402
from pipeline.reduce import image_params as ip  # noqa: E402
from pipeline.simulate.payload import Anomaly, Payload  # noqa: E402
from pipeline.simulate.windows import observe  # noqa: E402

T = 2.1e8
K = np.arange(1, ins.N_AF + 1)


def simulate(rng: np.random.Generator, g: np.ndarray, anomalies=()) -> tuple[dict, np.ndarray]:
    """Transits of stars of magnitudes g through the simulator's window model; known bias (n, 9)."""
    n = len(g)
    payload = Payload(int(rng.integers(1 << 30)), list(anomalies))
    t = T + np.sort(rng.uniform(0.0, 600.0, n))
    row = rng.integers(0, ins.N_ROWS, n)
    obs = observe(rng, payload, t, row, ins.flux_e_s(g))
    t_k = t[:, None] + (K - ins.REFERENCE_COLUMN) * ins.CCD_CROSSING_S
    b = payload.bias(t_k.ravel()).reshape(n, ins.N_AF, ins.N_ROWS, ins.N_CCD_COLUMNS)
    bias = b[np.arange(n)[:, None], np.arange(ins.N_AF)[None, :], row[:, None], K[None, :]]
    keep = obs["detected"]
    return {k: v[keep] for k, v in obs.items()}, bias[keep]


def scipy_fit_one(adu: np.ndarray, ns: int, bias: float, sigma: float) -> np.ndarray:
    """The alternative: one window with scipy.optimize.least_squares (model-variance weighted residuals)."""
    d = (adu[:ns].astype(float) - bias) * ins.GAIN_E_PER_ADU
    ok = adu[:ns] < ins.ADC_MAX
    b0 = float(np.median(d[[0, 1, ns - 2, ns - 1]]))
    f0 = max(float((d - b0).sum()), 10.0)

    def resid(p):
        lsf = lsf_fractions(np.array([p[1]]), sigma, ns)[0]
        mu = p[0] * lsf + p[2]
        return ((d - mu) / np.sqrt(np.maximum(mu + ip.READOUT_VARIANCE_E2, 1.0)))[ok]

    def jac(p):  # Gauss-Newton Jacobian with the variance held fixed (what IRLS does)
        lsf = lsf_fractions(np.array([p[1]]), sigma, ns)[0]
        dl = lsf_derivative_x0(np.array([p[1]]), sigma, ns)[0]
        sd = np.sqrt(np.maximum(p[0] * lsf + p[2] + ip.READOUT_VARIANCE_E2, 1.0))
        return -(np.stack([lsf, p[0] * dl, np.ones(ns)], axis=1) / sd[:, None])[ok]

    return least_squares(resid, [f0, ns / 2.0, b0], jac=jac, method="trf").x


def bench_speed(rng: np.random.Generator, n_transits: int, n_scipy: int) -> None:
    # magnitudes as the sky gives them: p(G) ~ 10^(0.334 G) on 10..20.7, plus a few bright gated stars
    u = rng.uniform(size=n_transits)
    a = 0.334 * np.log(10.0)
    g = np.log(np.exp(a * 10.0) + u * (np.exp(a * 20.7) - np.exp(a * 10.0))) / a
    g[: n_transits // 50] = rng.uniform(6.0, 10.0, n_transits // 50)
    obs, bias = simulate(rng, g)
    nw = obs["samples"].shape[0] * ins.N_AF
    args = (obs["samples"], obs["n_samples"], bias, obs["gate"], ins.NOMINAL_LSF_SIGMA_PX)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        fit = ip.fit_windows(*args)
        best = min(best, time.perf_counter() - t0)
    rate = nw / best
    sub = rng.choice(nw, n_scipy, replace=False)
    s = obs["samples"].reshape(nw, -1)[sub]
    ns = np.repeat(obs["n_samples"], ins.N_AF)[sub]
    bw = bias.reshape(-1)[sub]
    t0 = time.perf_counter()
    res = np.array(
        [scipy_fit_one(s[i], int(ns[i]), float(bw[i]), ins.NOMINAL_LSF_SIGMA_PX) for i in range(n_scipy)]
    )
    dt = time.perf_counter() - t0
    rate_sp = n_scipy / dt
    scale = np.repeat(2.0 ** -obs["gate"].astype(float), ins.N_AF)[sub]
    f_vec = fit["flux"].reshape(-1)[sub] * scale
    e_vec = fit["flux_err"].reshape(-1)[sub] * scale
    x_vec = fit["x0"].reshape(-1)[sub]
    ex_vec = fit["x0_err"].reshape(-1)[sub]
    it = fit["n_iter"].reshape(-1)
    print(f"## speed (one core): {nw} windows of {len(obs['gate'])} transits, G 6-20.7")
    print("| method | windows/s | µs/window |\n| --- | --- | --- |")
    print(f"| fit_windows (vectorised Fisher scoring) | {rate:,.0f} | {1e6 / rate:.1f} |")
    print(f"| scipy least_squares per window ({n_scipy} windows) | {rate_sp:,.0f} | {1e6 / rate_sp:.0f} |")
    print(f"speed ratio vectorised / scipy loop: {rate / rate_sp:.0f}x")
    print(
        f"iterations: mean {it.mean():.2f}, max {it.max()}; flagged windows {np.mean(fit['flags'] != 0):.4f}"
    )
    print(
        "agreement (scipy - vectorised) / error: flux median |.| "
        f"{np.median(np.abs(res[:, 0] - f_vec) / e_vec):.3f}, x0 median |.| "
        f"{np.median(np.abs(res[:, 1] - x_vec) / ex_vec):.3f}"
    )


def crb_table(rng: np.random.Generator, n_per_bin: int) -> list[dict]:
    rows = []
    for lo in range(6, 20):
        obs, bias = simulate(rng, rng.uniform(lo, lo + 1, n_per_bin))
        fit = ip.fit_windows(obs["samples"], obs["n_samples"], bias, obs["gate"], obs["lsf_sigma"])
        scale = 2.0 ** -obs["gate"][:, None].astype(float)
        sf, sx, sb = ip.cramer_rao(
            obs["flux_ccd"][:, None] / scale,
            obs["x0"],
            obs["background"],
            obs["lsf_sigma"],
            obs["n_samples"][:, None],
            obs["gate"][:, None],
        )
        ok = fit["flags"] == 0
        df = (fit["flux"] * scale - obs["flux_ccd"][:, None])[ok]
        dx = (fit["x0"] - obs["x0"])[ok]
        db = (fit["background"] - obs["background"])[ok]
        rms_f = np.sqrt(np.mean((sf * scale)[ok] ** 2))
        rms_x = np.sqrt(np.mean(sx[ok] ** 2))
        rms_b = np.sqrt(np.mean(sb[ok] ** 2))
        rows.append(
            {
                "g": f"{lo}-{lo + 1}",
                "g_mid": lo + 0.5,
                "windows": int(ok.size),
                "flagged": float(1 - ok.mean()),
                "gate": f"{obs['gate'].min()}-{obs['gate'].max()}",
                "n_samples": "/".join(str(v) for v in np.unique(obs["n_samples"])),
                "ratio_flux": df.std() / rms_f,
                "ratio_x0": dx.std() / rms_x,
                "ratio_b": db.std() / rms_b,
                "rel_flux_crb": float(np.median((sf * scale / obs["flux_ccd"][:, None])[ok])),
                "x0_crb_mas": float(np.median(sx[ok]) * ins.PIXEL_AL_MAS),
                "chi2": float(np.mean(fit["chi2"][ok])),
            }
        )
    print(
        f"\n## measured error / Cramér–Rao bound per G bin ({n_per_bin} transits = {9 * n_per_bin} windows)"
    )
    print(
        "| G | windows | gate | n_samples | flux | centroid | background | CRB σF/F | CRB σx0 (mas) | χ²ᵣ |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['g']} | {r['windows']} | {r['gate']} | {r['n_samples']} | {r['ratio_flux']:.3f} | "
            f"{r['ratio_x0']:.3f} | {r['ratio_b']:.3f} | {r['rel_flux_crb']:.2e} | {r['x0_crb_mas']:.3f} | "
            f"{r['chi2']:.3f} |"
        )
    worst = max(max(r["ratio_flux"], r["ratio_x0"]) for r in rows)
    print(
        f"largest ratio: {worst:.3f}; flagged windows: {sum(r['flagged'] * r['windows'] for r in rows):.0f}"
    )
    return rows


def bench_lsf(rng: np.random.Generator, n: int) -> None:
    print("\n## LSF-width estimator (G 10-17)")
    print("| true σ (px) | median estimate | ± | windows used | time (s) |\n| --- | --- | --- | --- | --- |")
    for drift in (0.0, 0.4):
        an = [Anomaly("focus_drift", T - 30 * 86400.0, T + 700.0, -1, -1, drift)] if drift else []
        obs, bias = simulate(rng, rng.uniform(10.0, 17.0, n), an)
        t0 = time.perf_counter()
        est = ip.estimate_lsf_width(obs["samples"], obs["n_samples"], bias, obs["gate"])
        dt = time.perf_counter() - t0
        print(
            f"| {obs['lsf_sigma'].mean():.4f} | {est['median']:.4f} | {est['median_err']:.5f} | "
            f"{est['n_used']} | {dt:.3f} |"
        )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = [r["g_mid"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(g, [r["ratio_flux"] for r in rows], "o-", label="flux")
    ax1.plot(g, [r["ratio_x0"] for r in rows], "s-", label="centroid x0")
    ax1.plot(g, [r["ratio_b"] for r in rows], "^:", label="background", alpha=0.6)
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.axhline(1.2, color="r", lw=0.8, ls="--", label="1.2 (requirement)")
    ax1.set_xlabel("G (mag)")
    ax1.set_ylabel("std(estimate - truth) / rms(CRB)")
    ax1.set_ylim(0.8, 1.3)
    ax1.legend()
    ax1.set_title("Image-parameter fit: error / Cramér–Rao bound")
    ax2.semilogy(g, [r["rel_flux_crb"] for r in rows], "o-", label="σF / F (per window)")
    ax2.semilogy(g, [r["x0_crb_mas"] / ins.PIXEL_AL_MAS for r in rows], "s-", label="σx0 (pixels)")
    ax2.set_xlabel("G (mag)")
    ax2.set_ylabel("Cramér–Rao bound")
    ax2.legend()
    ax2.set_title("CRB per window (gated below G ≈ 14)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", type=Path, default=Path("var/bench/image_params_crb.png"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--transits", type=int, default=20000, help="transits for the speed test")
    ap.add_argument("--scipy-windows", type=int, default=400)
    ap.add_argument("--per-bin", type=int, default=500, help="transits per magnitude bin")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    bench_speed(rng, a.transits, a.scipy_windows)
    rows = crb_table(rng, a.per_bin)
    bench_lsf(rng, 300)
    plot(rows, a.plot)


if __name__ == "__main__":
    main()
