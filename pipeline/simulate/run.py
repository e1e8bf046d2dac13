"""`soc simulate`: days of a Gaia-like mission over the real sky, as per-pass telemetry plus truth.

Time advances in blocks (one hour by default). Each block: find the FoV transits of the sky (real Gaia DR3
bright stars + the synthetic fainter population + new sources), apply events and quiet-star scatter, drop
what the on-board data deletion loses, record the windows of what the sky mapper detects, encode star,
housekeeping and auxiliary packets with per-APID sequence counts and put them in the on-board store.
At the end of each ground-station contact the store sends what fits, the faults are applied and the pass
file and its sidecar are written. Memory stays bounded by one block plus the on-board backlog.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline import instrument as ins
from pipeline.mission_time import DAY_S, from_utc, iso, obt_of, to_utc
from pipeline.progress import progress_bar
from pipeline.simulate import events as ev
from pipeline.simulate.downlink import (
    FAULT_KINDS,
    PRIORITY_AUX,
    PRIORITY_HK,
    PRIORITY_STAR0,
    OnboardStore,
    contact_schedule,
    deliver,
)
from pipeline.simulate.hashing import normal, uniform
from pipeline.simulate.payload import ANOMALY_KINDS, HK_CADENCE_S, Payload, plan_anomalies
from pipeline.simulate.scanlaw import ScanLaw, sun_longitude
from pipeline.simulate.sky import Sky
from pipeline.simulate.transits import find_transits, transits_in_interval
from pipeline.simulate.truth import TruthWriter
from pipeline.simulate.windows import observe, photon_sigma_mag
from pipeline.telemetry import encode as enc
from pipeline.telemetry.batch import PacketBatch
from pipeline.telemetry.layout import (
    APID_AUX_ATTITUDE,
    APID_AUX_TIMECORR,
    APID_HK_BIAS,
    APID_HK_POWER,
    APID_HK_THERMAL,
    star_apid,
)
from pipeline.telemetry.passfile import pass_meta_for, write_pass

ATTITUDE_CADENCE_S = 4.0
TIMECORR_CADENCE_S = 60.0
SEQ_MODULO = 1 << 14
# Average telemetry volume per simulated day at scale 1 (measured with bench/bench_simulate.py); the
# downlink is sized from it so that average days drain and dense Galactic-plane days build a backlog.
BYTES_PER_DAY_AT_SCALE_1 = 1.5e10
MEAN_CONTACT_HOURS_PER_DAY = 12.0
FATES = ("telemetered", "onboard_deleted", "undetected")


@dataclass(frozen=True)
class SimConfig:
    start: str = "2016-08-01"
    days: float = 1.0
    scale: float = 0.001
    seed: int = 1
    faults: tuple[str, ...] = ()
    anomalies: tuple[str, ...] = ()
    event_rate: float = ev.DEFAULT_EVENT_RATE
    new_source_density: float = ev.DEFAULT_NEW_SOURCE_DENSITY
    downlink_margin: float = 1.3
    block_s: float = 3600.0
    progress: bool = True

    def __post_init__(self):
        for f in self.faults:
            if f not in FAULT_KINDS:
                raise ValueError(f"unknown fault {f!r}; known: {', '.join(FAULT_KINDS)}")
        for a in self.anomalies:
            if a not in ANOMALY_KINDS:
                raise ValueError(f"unknown anomaly {a!r}; known: {', '.join(ANOMALY_KINDS)}")
        if self.days <= 0 or self.scale <= 0:
            raise ValueError("--days and --scale must be positive")

    @property
    def downlink_rate_bytes_s(self) -> float:
        daily = BYTES_PER_DAY_AT_SCALE_1 * self.scale * self.downlink_margin
        return daily / (MEAN_CONTACT_HOURS_PER_DAY * 3600.0)


def _assign_seq(counter: np.ndarray, apid: np.ndarray) -> np.ndarray:
    """Per-APID sequence counts for packets in generation order; advances counter in place."""
    order = np.argsort(apid, kind="stable")
    sorted_apid = apid[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_apid)) + 1]
    rank = np.arange(len(apid)) - np.repeat(first, np.diff(np.r_[first, len(apid)]))
    seq = np.empty(len(apid), np.int64)
    seq[order] = counter[sorted_apid] + rank
    np.add.at(counter, apid, 1)
    return seq % SEQ_MODULO


def _grid(t0: float, t1: float, cadence: float) -> np.ndarray:
    return np.arange(np.ceil(t0 / cadence), np.ceil(t1 / cadence)) * cadence


class Simulator:
    def __init__(self, out_dir: Path, cfg: SimConfig):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.t_lo = float(from_utc(cfg.start))
        self.t_hi = self.t_lo + cfg.days * DAY_S
        self.scan = ScanLaw()
        self.sky = Sky(cfg.seed, cfg.scale)
        self.anomalies = plan_anomalies(cfg.seed, self.t_lo, self.t_hi, cfg.anomalies)
        self.payload = Payload(cfg.seed, self.anomalies)
        self.contacts = contact_schedule(cfg.seed, self.t_lo, self.t_hi)
        bins = np.arange(
            int(np.floor(self.t_lo / ev.EVENT_BIN_S)) - max(ev.BIN_OFFSETS),
            int(np.floor(self.t_hi / ev.EVENT_BIN_S)) - min(ev.BIN_OFFSETS) + 1,
        )
        self.new = ev.new_sources(cfg.seed, cfg.scale, cfg.new_source_density, bins)
        self.new_xyz = np.column_stack([self.new["x"], self.new["y"], self.new["z"]])
        self.store = OnboardStore()
        self.truth = TruthWriter(self.out)
        self.seq = np.zeros(2048, np.int64)
        self.packet_key = 0
        self.events_seen: dict[int, tuple[int, int, float]] = {}
        self.counts: dict[str, int] = {k: 0 for k in (*FATES, "transits", "packets", "passes", "deliveries")}
        self.fault_counts: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self.bytes_delivered = 0

    # --- generation -------------------------------------------------------------------------------------
    def _block_transits(self, b0: float, b1: float) -> dict:
        tr, src = transits_in_interval(self.sky, self.scan, b0, b1)
        tn = find_transits(self.scan, self.new_xyz, b0, b1)
        tr, tn = tr[tr["on_ccd"]], tn[tn["on_ccd"]]
        s = src[tr["idx"]]
        nn = len(tn)
        return {
            "source_id": np.r_[s["source_id"], self.new["source_id"][tn["idx"]]].astype(np.int64),
            "origin": np.r_[s["origin"], np.full(nn, 2)].astype(np.uint8),
            "ra": np.r_[s["ra"], self.new["ra"][tn["idx"]]],
            "dec": np.r_[s["dec"], self.new["dec"][tn["idx"]]],
            "g_quiet": np.r_[s["g"].astype(float), np.full(nn, np.inf)],
            "t": np.r_[tr["t"], tn["t"]],
            "fov": np.r_[tr["fov"], tn["fov"]].astype(np.uint8),
            "row": np.r_[tr["row"], tn["row"]].astype(np.int64),
            "ac_pixel": np.r_[tr["ac_pixel"], tn["ac_pixel"]],
            "zeta_deg": np.r_[tr["zeta_deg"], tn["zeta_deg"]],
        }

    def _add(self, batch: PacketBatch, priority: np.ndarray, t_gen: np.ndarray) -> None:
        keys = self.packet_key + np.arange(len(batch))
        self.packet_key += len(batch)
        self.store.add(batch, priority, t_gen, keys)
        self.counts["packets"] += len(batch)

    def _housekeeping(self, b0: float, b1: float) -> None:
        t = _grid(b0, b1, HK_CADENCE_S)
        for apid, values, fn in (
            (APID_HK_THERMAL, self.payload.hk_thermal(t), enc.encode_hk_thermal),
            (APID_HK_BIAS, self.payload.hk_bias(t), enc.encode_hk_bias),
            (APID_HK_POWER, self.payload.hk_power(t), enc.encode_hk_power),
        ):
            seq = _assign_seq(self.seq, np.full(len(t), apid))
            self._add(fn(obt_of(t), seq, values), np.full(len(t), PRIORITY_HK), t)
        ta = _grid(b0, b1, ATTITUDE_CADENCE_S)
        seq = _assign_seq(self.seq, np.full(len(ta), APID_AUX_ATTITUDE))
        batch = enc.encode_attitude(
            obt_of(ta),
            seq,
            self.scan.quaternion(ta),
            self.scan.spin_phase(ta),
            self.scan.precession_phase(ta),
            sun_longitude(ta),
        )
        self._add(batch, np.full(len(ta), PRIORITY_AUX), ta)
        tc = _grid(b0, b1, TIMECORR_CADENCE_S)
        seq = _assign_seq(self.seq, np.full(len(tc), APID_AUX_TIMECORR))
        batch = enc.encode_timecorr(obt_of(tc), seq, tc, np.full(len(tc), ins.OBT_RATE))
        self._add(batch, np.full(len(tc), PRIORITY_AUX), tc)

    def _block(self, b0: float, b1: float) -> int:
        cfg = self.cfg
        self._housekeeping(b0, b1)
        x = self._block_transits(b0, b1)
        n = len(x["t"])
        order = np.argsort(x["t"], kind="stable")
        x = {k: v[order] for k, v in x.items()}
        sid, t = x["source_id"], x["t"]
        tkey = np.round(t * 1000.0).astype(np.int64)
        flux, event_id, event_bin = ev.apply_events(cfg.seed, cfg.event_rate, sid, x["g_quiet"], t)
        g_true = ins.g_of_flux_e_s(flux)
        g_safe = np.where(np.isfinite(g_true), g_true, 30.0)
        extra = ev.quiet_scatter_sigma(g_safe, photon_sigma_mag(g_safe))
        flux = flux * 10.0 ** (-0.4 * extra * normal(cfg.seed, sid, tkey, 0x5C))
        deleted = uniform(cfg.seed, sid, tkey, 0xDE1) < ins.ONBOARD_LOSS_FRACTION
        rng = np.random.default_rng([cfg.seed, int(np.floor(b0))])
        keep = np.flatnonzero(~deleted)
        obs = observe(rng, self.payload, t[keep], x["row"][keep], flux[keep])
        fate = np.full(n, FATES.index("onboard_deleted"), np.int8)
        fate[keep] = np.where(obs["detected"], FATES.index("telemetered"), FATES.index("undetected"))

        # star packets, in the order their AF1 windows start
        sent = keep[obs["detected"]]
        det = {k: v[obs["detected"]] for k, v in obs.items()}
        o = np.argsort(det["obt_af1"], kind="stable")
        sent, det = sent[o], {k: v[o] for k, v in det.items()}
        apid = star_apid(det["mag_class"], x["fov"][sent], x["row"][sent]).astype(np.int64)
        seq = _assign_seq(self.seq, apid)
        m = len(sent)
        batch = enc.encode_star(
            det["obt_af1"],
            seq,
            x["fov"][sent],
            x["row"][sent],
            det["mag_class"],
            np.clip(np.round(x["ac_pixel"][sent]), 0, ins.CCD_AC_PIXELS - 1).astype(np.uint16),
            det["sm_flux"],
            det["gate"],
            det["saturated"].astype(np.uint8),
            np.zeros((m, ins.N_AF), np.int8),
            det["samples"],
            det["n_samples"],
        )
        t_complete = t[sent] + (ins.N_AF - ins.REFERENCE_COLUMN + 1) * ins.CCD_CROSSING_S
        self._add(batch, PRIORITY_STAR0 + det["mag_class"], t_complete)

        # truth, one row per on-CCD transit
        full = {k: np.zeros((n, *v.shape[1:]), v.dtype) for k, v in obs.items()}
        for k, v in obs.items():
            full[k][keep] = v
        pk_apid = np.zeros(n, np.int64)
        pk_seq = np.full(n, -1, np.int64)
        pk_apid[sent], pk_seq[sent] = apid, seq
        self.truth.append(
            "transits",
            {
                "source_id": sid,
                "origin": x["origin"],
                "ra": x["ra"],
                "dec": x["dec"],
                "g_quiet": np.where(np.isfinite(x["g_quiet"]), x["g_quiet"], np.nan),
                "g_true": g_true,
                "t": t,
                "utc": to_utc(t),
                "fov": x["fov"],
                "row": x["row"].astype(np.int8),
                "ac_pixel": x["ac_pixel"],
                "zeta_deg": x["zeta_deg"],
                "event_id": event_id,
                "fate": np.array(FATES)[fate],
                "apid": pk_apid.astype(np.int16),
                "seq": pk_seq.astype(np.int32),
                "obt_af1": full["obt_af1"],
                "g_sm": full["g_sm"],
                "n_samples": full["n_samples"].astype(np.int8),
                "gate": full["gate"].astype(np.int8),
                "saturated": full["saturated"],
                "flux_ccd": full["flux_ccd"],
                "background": full["background"][:, 0],
                "lsf_sigma": full["lsf_sigma"],
                "x0": full["x0"],
            },
        )
        for e, s_, b_, g_ in zip(
            event_id[event_id != 0],
            sid[event_id != 0],
            event_bin[event_id != 0],
            x["g_quiet"][event_id != 0],
            strict=True,
        ):
            self.events_seen.setdefault(int(e), (int(s_), int(b_), float(g_)))
        self.counts["transits"] += n
        for i, f in enumerate(FATES):
            self.counts[f] += int((fate == i).sum())
        return n

    # --- downlink ---------------------------------------------------------------------------------------
    def _contact(self, c, truncate: bool, repeat: bool) -> None:
        capacity = self.cfg.downlink_rate_bytes_s * (c.los - c.aos)
        sent, t_gen, _ = self.store.downlink(capacity, c.los)
        rng = np.random.default_rng([self.cfg.seed, 0xD0, int(c.aos)])
        d = deliver(rng, sent, self.cfg.faults, truncate)
        data = d.data if d.truncated_at is None else d.data[: d.truncated_at]
        for delivery, delay_s in [(1, 600.0), *([(2, 7200.0)] if repeat else [])]:
            received = iso(c.los + delay_s)
            meta = pass_meta_for(
                c.station, c.pass_id, iso(c.aos), iso(c.los), received, d.data,
                packet_count=len(d.sent_index), delivery=delivery,
            )  # fmt: skip
            write_pass(self.out / "passes", meta, data)
            self.counts["deliveries"] += 1
        self.counts["passes"] += 1
        self.bytes_delivered += len(data)
        if repeat:
            d.faults.append(
                {
                    "kind": "repeat_pass",
                    "apid": -1,
                    "seq": -1,
                    "obt": float("nan"),
                    "file_offset": -1,
                    "bit": -1,
                    "detail": "whole pass delivered twice (delivery 2)",
                }
            )
        fate = np.full(len(sent), "delivered", dtype=object)
        fate[d.lost] = "lost_in_downlink"
        first_offset = np.full(len(sent), -1, np.int64)
        first_copy = np.unique(d.sent_index, return_index=True)[1]
        first_offset[d.sent_index[first_copy]] = d.file_offset[first_copy]
        if d.truncated_at is not None:
            fate[(first_offset >= 0) & (first_offset + sent.length > d.truncated_at)] = "truncated"
        self._packet_truth(sent, t_gen, c.pass_id, first_offset, fate)
        for f in d.faults:
            f.update(pass_id=c.pass_id, station=c.station)
            self.fault_counts[f["kind"]] += 1
        self.truth.append_rows("faults", d.faults)
        self.truth.append_rows(
            "contacts",
            [
                {
                    "pass_id": c.pass_id,
                    "station": c.station,
                    "aos": iso(c.aos),
                    "los": iso(c.los),
                    "capacity_bytes": int(capacity),
                    "packets": len(sent),
                    "bytes": int(sent.nbytes),
                    "backlog_packets": len(self.store),
                    "backlog_bytes": int(self.store.batch.nbytes),
                    "truncated_at": -1 if d.truncated_at is None else d.truncated_at,
                    "repeated": repeat,
                }
            ],
        )

    def _packet_truth(self, batch: PacketBatch, t_gen, pass_id: str, offset, fate) -> None:
        self.truth.append(
            "packets",
            {
                "apid": batch.apid.astype(np.int16),
                "seq": batch.seq.astype(np.int32),
                "obt": batch.obt,
                "length": batch.length.astype(np.int32),
                "t_generated": t_gen,
                "pass_id": np.full(len(batch), pass_id, dtype=object),
                "file_offset": offset,
                "fate": np.asarray(fate, dtype=object),
            },
        )

    # --- the run ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.perf_counter()
        cfg = self.cfg
        day_of = [int(np.floor(c.aos / DAY_S)) for c in self.contacts]
        last_of_day = {d: i for i, d in enumerate(day_of)}
        first_of_day = {d: i for i, d in reversed(list(enumerate(day_of)))}
        edges = np.append(np.arange(self.t_lo, self.t_hi, cfg.block_s), self.t_hi)
        gen = 0
        with progress_bar(cfg.progress) as bar:
            task = bar.add_task("simulating", total=len(edges) - 1)
            for i, c in enumerate([*self.contacts, None]):
                until = self.t_hi if c is None else min(c.los, self.t_hi)
                while gen < len(edges) - 1 and edges[gen] < until:
                    n = self._block(edges[gen], edges[gen + 1])
                    gen += 1
                    bar.update(task, advance=1, description=f"{iso(edges[gen])[:16]} {n:>7} transits")
                if c is not None:
                    self._contact(
                        c,
                        "truncate" in cfg.faults and last_of_day[day_of[i]] == i,
                        "repeat_pass" in cfg.faults and first_of_day[day_of[i]] == i,
                    )
        left = self.store.batch
        self._packet_truth(left, self.store.t_gen, "", np.full(len(left), -1), ["onboard_at_end"] * len(left))
        self._write_events()
        self.truth.append_rows("anomalies", [a.as_row() for a in self.anomalies])
        self.truth.close()
        summary = {
            "software": f"soc-pipeline {__version__}",
            "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
            "start_utc": iso(self.t_lo),
            "end_utc": iso(self.t_hi),
            "counts": self.counts,
            "faults": self.fault_counts,
            "anomalies": [a.kind for a in self.anomalies],
            "events": len(self.events_seen),
            "bytes_delivered": self.bytes_delivered,
            "onboard_at_end": {"packets": len(left), "bytes": int(left.nbytes)},
            "truth_rows": self.truth.rows,
            "elapsed_s": round(time.perf_counter() - started, 2),
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return summary

    def _write_events(self) -> None:
        if not self.events_seen:
            return
        ids = np.fromiter(self.events_seen, np.int64)
        sid, ebin, g0 = (np.array(v) for v in zip(*self.events_seen.values(), strict=True))
        p = ev.event_parameters(self.cfg.seed, sid, ebin, g0)
        self.truth.append(
            "events",
            {
                "event_id": ids,
                "source_id": sid,
                "kind": np.array(ev.KINDS)[p["kind"]],
                "g_quiet": np.where(np.isfinite(g0), g0, np.nan),
                "in_catalogue": np.isfinite(g0),
                **{k: v for k, v in p.items() if k != "kind"},
            },
        )


def simulate(out_dir: Path, cfg: SimConfig) -> dict:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Simulator(Path(out_dir), cfg).run()
