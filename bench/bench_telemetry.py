"""Telemetry codec benchmark: compression table, encode and decode_pass throughput, ccsdspy side by side.

Run: python bench/bench_telemetry.py [--stars 100000] [--table-packets 5000] [--passes DIR]
Prints figures only (no assertions). The default codec (layout.DEFAULT_CODEC) comes first in every table,
the alternatives after it with their ratios to it. Realistic windows: samples = Poisson(flux L_j + 12 e-)
+ N(0, 5 e-), / 4 e-/ADU + 1500 ADU, rounded and clipped, with L_j = lsf_fractions(x0 ~ n/2, 0.9, n),
flux from flux_e_per_ccd(G), G drawn with p(G) ~ 10**(0.334 G) on 10..20.7, and the on-board gate applied
to bright stars (exposure 2**-gate, as gate_for_peak chooses it). --passes DIR adds the star windows of a
simulator run's pass files, re-encoded with every codec.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ccsdspy
import zstandard

from pipeline import instrument as ins
from pipeline.lsf import lsf_fractions
from pipeline.telemetry import encode as E
from pipeline.telemetry import layout as L
from pipeline.telemetry import window_codec as W
from pipeline.telemetry.batch import PacketBatch
from pipeline.telemetry.decode import decode_packet, decode_pass


def draw_g(rng, n):
    """p(G) ~ 10**(0.334 G) on [10, 20.7], by inverting the CDF."""
    a = 0.334 * np.log(10.0)
    lo, hi = np.exp(a * 10.0), np.exp(a * ins.DETECTION_LIMIT_G)
    return np.log(lo + rng.random(n) * (hi - lo)) / a


def realistic_windows(rng, n):
    g = draw_g(rng, n)
    ns = ins.window_samples(g).astype(np.int64)
    flux = ins.flux_e_per_ccd(g)
    samples = np.zeros((n, L.N_WINDOWS, L.MAX_SAMPLES), dtype=np.uint16)
    gates = np.zeros(n, dtype=np.int64)
    saturated = np.zeros(n, dtype=bool)
    for nn in L.WINDOW_LENGTHS:
        m = np.flatnonzero(ns == nn)
        # image centre: a per-transit offset from the window centre plus a small drift between CCDs
        x0 = nn / 2 + rng.uniform(-0.5, 0.5, (m.size, 1)) + rng.normal(0, 0.1, (m.size, L.N_WINDOWS))
        lsf = lsf_fractions(x0, ins.NOMINAL_LSF_SIGMA_PX, nn)
        gate, sat = ins.gate_for_peak(flux[m] * lsf.max(axis=(1, 2)))
        e = rng.poisson(flux[m, None, None] * 2.0 ** -gate[:, None, None] * lsf + ins.SKY_BACKGROUND_E)
        e = e + rng.normal(0, ins.READ_NOISE_E, e.shape)
        adu = np.clip(np.rint(e / ins.GAIN_E_PER_ADU + ins.NOMINAL_BIAS_ADU), 0, ins.ADC_MAX)
        samples[m, :, :nn] = adu.astype(np.uint16)
        gates[m], saturated[m] = gate, sat | np.any(adu >= ins.ADC_MAX, axis=(1, 2))
    return g, ns, samples, gates, saturated


def star_inputs(rng, n, t0=3.0e7, duration=3600.0):
    """encode_star keyword arguments (all but codec) for n realistic transits, in OBT order."""
    g, ns, samples, gates, sat = realistic_windows(rng, n)
    return dict(
        obt=t0 + np.sort(rng.uniform(0, duration, n)),
        seq=np.arange(n),
        fov=rng.integers(0, 2, n),
        row=rng.integers(0, 7, n),
        mag_class=ins.magnitude_class(g),
        ac_pixel=rng.integers(0, ins.CCD_AC_PIXELS, n),
        sm_flux=np.rint(ins.flux_e_per_ccd(g) / 9.0),
        gate=gates,
        flags=sat.astype(np.int64),
        al_offset=rng.integers(-2, 3, (n, 9)),
        samples=samples,
        n_samples=ns,
    )


def aux_batches(rng, n, t0=3.0e7, duration=3600.0):
    t = t0 + np.linspace(0, duration, n)
    s = np.arange(n)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return [
        E.encode_hk_thermal(t + 0.1, s, rng.uniform(160, 300, (n, 9))),
        E.encode_hk_bias(t + 0.2, s, rng.uniform(1490, 1510, (n, 7, 10))),
        E.encode_hk_power(t + 0.3, s, rng.uniform(0, 30, (n, 8))),
        E.encode_attitude(t + 0.4, s, q, *rng.uniform(0, 2 * np.pi, (3, n))),
        E.encode_timecorr(t + 0.5, s, t - ins.OBT_OFFSET_S, np.full(n, ins.OBT_RATE)),
    ]


# --- compression table -----------------------------------------------------------------------------------


def rows_for(samples, ns, nn, filt):
    """The bytes each codec variant is given, for the packets with n_samples == nn: (m, 18 nn) uint8."""
    x = samples[ns == nn, :, :nn].astype(np.int32)
    m = x.shape[0]
    if filt == "pred+zigzag+shuffle":
        return W.zstd_filter(x)
    flat = x.reshape(m, -1)
    if "diff" in filt:
        flat = np.diff(flat, axis=1, prepend=0) & 0xFFFF
    v = flat.astype(np.uint16)
    return W.shuffle_bytes(v) if "shuffle" in filt else v.astype(">u2").view(np.uint8).reshape(m, -1)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def best_of_two(fn, *args):
    """timed, run twice: the faster run, so that first-call costs do not count."""
    return min((timed(fn, *args) for _ in range(2)), key=lambda r: r[1])


def compression_table(samples, ns):
    """(name, filter, ratio, encode us/packet, decode us/packet) of every variant, the default codec first."""
    raw_bytes = int(2 * L.N_WINDOWS * ns.sum())
    n = ns.size
    lines = []
    filters = ("none", "shuffle", "diff", "diff+shuffle", "pred+zigzag+shuffle")
    for name in ("zstd-3", f"zstd-{L.ZSTD_LEVEL}", "zlib-9"):
        for filt in filters:
            size = t_enc = t_dec = 0.0
            for nn in L.WINDOW_LENGTHS:
                rows = rows_for(samples, ns, nn, filt)
                if name.startswith("zstd"):
                    cctx = W.zstd_compressor(int(name.split("-")[1]))
                    (flat, ln), te = best_of_two(W.zstd_compress_rows, rows, cctx)
                    st = np.cumsum(ln) - ln
                    (out, ok), td = best_of_two(W.zstd_decompress_segments, flat, st, ln, rows.shape[1])
                    assert ok.all() and np.array_equal(out, rows)
                else:
                    frames, te = best_of_two(lambda r: [zlib.compress(row.tobytes(), 9) for row in r], rows)
                    ln = np.array([len(f) for f in frames])
                    _, td = best_of_two(lambda fr: [zlib.decompress(f) for f in fr], frames)
                size += ln.sum()
                t_enc += te
                t_dec += td
            codec = L.CODEC_ZSTD if (name, filt) == (f"zstd-{L.ZSTD_LEVEL}", filters[-1]) else None
            lines.append((name, filt, codec, raw_bytes / size, 1e6 * t_enc / n, 1e6 * t_dec / n))
    size = t_enc = t_dec = 0.0
    for nn in L.WINDOW_LENGTHS:
        x = samples[ns == nn, :, :nn].astype(np.int32)
        (flat, ln), te = best_of_two(W.rice_encode, x)
        (xd, err), td = best_of_two(W.rice_decode, flat, ln, nn)
        assert not err.any() and np.array_equal(xd, x)
        size += np.minimum(ln, 2 * x[0].size).sum()
        t_enc += te
        t_dec += td
    lines.append(
        (
            "rice (numpy)",
            "pred+zigzag, k per window",
            L.CODEC_RICE,
            raw_bytes / size,
            1e6 * t_enc / n,
            1e6 * t_dec / n,
        )
    )
    # the default codec first, then the other codecs the decoder reads, then the variants that are not codecs
    return sorted(lines, key=lambda r: (r[2] != L.DEFAULT_CODEC, r[2] is None))


def codec_label(codec) -> str:
    if codec is None:
        return ""
    return f"{codec} {L.CODEC_NAMES[codec]}" + (" (default)" if codec == L.DEFAULT_CODEC else "")


def print_compression_table(samples, ns):
    lines = compression_table(samples, ns)
    d_ratio, d_enc, d_dec = lines[0][3:]
    print(
        f"{'codec byte':16s} {'compressor':13s} {'filter':26s} {'ratio':>6s} {'x dflt':>6s} "
        f"{'enc us/pkt':>10s} {'x dflt':>6s} {'dec us/pkt':>10s} {'x dflt':>6s}"
    )
    for name, filt, codec, ratio, te, td in lines:
        print(
            f"{codec_label(codec):16s} {name:13s} {filt:26s} {ratio:6.3f} {ratio / d_ratio:6.2f} "
            f"{te:10.1f} {te / d_enc:6.2f} {td:10.1f} {td / d_dec:6.2f}"
        )
    print("(x dflt: the value divided by that of the default codec)")


# --- the codecs side by side on a pass -------------------------------------------------------------------


def codec_order():
    """The default codec first, then the other compressing codecs, raw last."""
    others = sorted(set(L.CODEC_NAMES) - {L.DEFAULT_CODEC, L.CODEC_RAW})
    return [L.DEFAULT_CODEC, *others] + ([L.CODEC_RAW] if L.DEFAULT_CODEC != L.CODEC_RAW else [])


def packet_ratios(lengths, ns):
    """(payload ratio, whole-packet ratio, mean packet bytes) of star packets of these lengths."""
    payload = lengths - L.HEADER_LEN - L.STAR_FIXED_LEN - L.CRC_LEN
    raw = 2 * L.N_WINDOWS * ns
    return raw.sum() / payload.sum(), (lengths - payload + raw).sum() / lengths.sum(), lengths.mean()


def compare_codecs_on_stream(star_kwargs, samples, ns):
    """Encode and decode_pass the same star packets with every codec; print them side by side."""
    keep = np.arange(L.MAX_SAMPLES)[None, None, :] < ns[:, None, None]
    expected = np.where(keep, samples, 0)
    results = []
    for codec in codec_order():
        batch, t_enc = timed(lambda c=codec: E.encode_star(**star_kwargs, codec=c))
        data = batch.tobytes()
        dp, t_dec = timed(decode_pass, data)
        assert not dp.problems and np.array_equal(dp.star["samples"], expected)
        results.append((codec, *packet_ratios(batch.length, ns), len(batch) / t_enc, len(batch) / t_dec))
    d = results[0]
    print(
        f"{'codec':16s} {'payload ratio':>13s} {'packet ratio':>12s} {'mean bytes':>10s} "
        f"{'encode pk/s':>11s} {'decode_pass pk/s':>16s}   (x default: payload ratio, encode, decode)"
    )
    for codec, pr, wr, mean, enc, dec in results:
        print(
            f"{codec_label(codec):16s} {pr:13.3f} {wr:12.3f} {mean:10.1f} {enc:11.0f} {dec:16.0f}   "
            f"x{pr / d[1]:.2f} x{enc / d[4]:.2f} x{dec / d[5]:.2f}"
        )


def simulator_passes(directory):
    """The simulator's pass files: codecs as sent, and every codec on the same windows, per window length."""
    files = sorted(Path(directory).glob("*.tm"))
    parts = [decode_pass(f.read_bytes()) for f in files]
    star = {
        k: np.concatenate([p.star[k] for p in parts]) for k in ("samples", "n_samples", "codec", "packet")
    }
    lengths = np.concatenate([p.packets["length"][p.star["packet"]] for p in parts])
    ns = star["n_samples"].astype(np.int64)
    sent = {L.CODEC_NAMES[c]: int(np.sum(star["codec"] == c)) for c in L.CODEC_NAMES}
    print(
        f"\nSimulator passes in {directory}: {len(files)} files, {ns.size} star packets, "
        f"codecs as sent {sent}"
    )
    pr, wr, mean = packet_ratios(lengths, ns)
    print(f"as sent: payload ratio {pr:.3f}, whole-packet ratio {wr:.3f}, mean star packet {mean:.1f} bytes")
    raw = [2 * L.N_WINDOWS * ns[ns == nn].sum() for nn in L.WINDOW_LENGTHS]
    sizes = {}  # label -> compressed bytes per window length
    for codec in codec_order():
        _, _, ln = W.compress_windows(star["samples"], ns, codec)
        sizes[codec_label(codec)] = [ln[ns == nn].sum() for nn in L.WINDOW_LENGTHS]
    cctx = W.zstd_compressor(L.ZSTD_LEVEL)
    sizes[f"zstd-{L.ZSTD_LEVEL} shuffle"] = [
        W.zstd_compress_rows(rows_for(star["samples"], ns, nn, "shuffle"), cctx)[1].sum()
        for nn in L.WINDOW_LENGTHS
    ]
    counts = " ".join(f"{f'n={nn} ({np.sum(ns == nn)})':>12s}" for nn in L.WINDOW_LENGTHS)
    print(f"payload ratio if sent with:\n{'':16s} {'all':>6s} {counts}")
    for label, size in sizes.items():
        by_n = " ".join(f"{r / max(c, 1):12.3f}" for r, c in zip(raw, size, strict=True))
        print(f"{label:16s} {sum(raw) / sum(size):6.3f} {by_n}")
    print(f"(zstd-{L.ZSTD_LEVEL} shuffle is not a codec: the byte-shuffled samples without prediction)")


# --- main ------------------------------------------------------------------------------------------------


def ccsdspy_star_definition():
    f, a = ccsdspy.PacketField, ccsdspy.PacketArray
    return ccsdspy.VariableLength(
        [
            f("obt_coarse", "uint", 32),
            f("obt_fine", "uint", 24),
            f("layout_version", "uint", 8),
            f("ac_pixel", "uint", 16),
            f("sm_flux", "uint", 32),
            f("gate", "uint", 8),
            f("flags", "uint", 8),
            f("n_samples", "uint", 8),
            f("n_windows", "uint", 8),
            a("al_offset", "int", 8, array_shape=9),
            f("codec", "uint", 8),
            f("payload_length", "uint", 16),
            a("payload", data_type="uint", bit_length=8, array_shape="payload_length"),
            f("crc", "uint", 16),
        ]
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stars", type=int, default=100_000)
    ap.add_argument("--aux", type=int, default=720, help="packets of each HK/aux kind")
    ap.add_argument("--table-packets", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--passes", help="also measure the star windows of the pass files (*.tm) in this folder")
    args = ap.parse_args(argv)
    logging.getLogger("ccsdspy").setLevel(logging.ERROR)
    rng = np.random.default_rng(args.seed)
    t_all = time.perf_counter()
    print(
        f"zstandard {zstandard.__version__} ({zstandard.backend}), ccsdspy {ccsdspy.__version__}, "
        f"numpy {np.__version__}"
    )
    print(
        "batch APIs: multi_compress_to_buffer",
        hasattr(zstandard.ZstdCompressor, "multi_compress_to_buffer"),
        "multi_decompress_to_buffer",
        hasattr(zstandard.ZstdDecompressor, "multi_decompress_to_buffer"),
    )

    # 1. compression table
    _, ns_t, samples_t, _, _ = realistic_windows(rng, args.table_packets)
    print(
        f"\nCompression of the AF samples, {args.table_packets} realistic packets "
        f"({np.mean(ns_t == 12):.1%} with 12-sample windows); one frame per packet, as sent; "
        f"the default codec ({L.DEFAULT_CODEC} {L.CODEC_NAMES[L.DEFAULT_CODEC]}) first:"
    )
    print_compression_table(samples_t, ns_t)

    # 2. a realistic pass, encoded with the default codec
    kw = star_inputs(rng, args.stars)
    samples, ns = kw["samples"], kw["n_samples"]
    star, t_star = timed(lambda: E.encode_star(**kw))
    t = time.perf_counter()
    aux = aux_batches(rng, args.aux)
    t_aux = time.perf_counter() - t
    stream = PacketBatch.concat([star, *aux])
    stream = stream.take(np.argsort(stream.obt, kind="stable"))
    data = stream.tobytes()
    n_pk, mb = len(stream), len(data) / 1e6
    default = f"{L.DEFAULT_CODEC} {L.CODEC_NAMES[L.DEFAULT_CODEC]}"
    print(
        f"\nPass: {len(star)} star + {len(stream) - len(star)} HK/aux packets, {mb:.2f} MB, codec {default}"
    )
    pr, wr, mean = packet_ratios(star.length, ns)
    print(f"star payload ratio (raw sample bytes / payload bytes): {pr:.3f}")
    print(
        f"star whole-packet ratio (packets with raw samples / packets as sent): {wr:.3f}"
        f"  (mean star packet {mean:.1f} bytes)"
    )
    enc_t = t_star + t_aux
    print(f"encode       : {n_pk / enc_t:10.0f} packets/s {mb / enc_t:7.1f} MB/s  ({enc_t:.2f} s)")

    # 3. decode_pass
    dp, t_dec = timed(decode_pass, data)
    assert not dp.problems and len(dp.packets) == n_pk
    keep = np.arange(18)[None, None, :] < ns[:, None, None]
    assert np.array_equal(dp.star["samples"], np.where(keep, samples, 0))  # stars stay in OBT order
    print(
        f"decode_pass  : {n_pk / t_dec:10.0f} packets/s {mb / t_dec:7.1f} MB/s  ({t_dec:.2f} s; "
        f"framing, CRC, ccsdspy HK/aux, {L.CODEC_NAMES[L.DEFAULT_CODEC]} payloads)"
    )
    print(f"\nThe same {len(star)} star packets with each codec (star stream only):")
    compare_codecs_on_stream(kw, samples, ns)

    # 4. side by side on the star stream alone: ours vs ccsdspy VariableLength vs per-packet decode_packet
    star_data = star.tobytes()
    smb = len(star_data) / 1e6
    _, t_ours = timed(decode_pass, star_data)
    definition = ccsdspy_star_definition()
    res, t_cc = timed(lambda d: definition.load(io.BytesIO(d), include_primary_header=True), star_data)
    assert len(res["payload"]) == len(star)
    k = min(5000, len(star))
    _, t_loop = timed(lambda: [decode_packet(star_data, int(o)) for o in star.start[:k]])
    t_loop *= len(star) / k
    print(f"\nStar stream only ({len(star)} packets, {smb:.2f} MB):")
    print(
        f"decode_pass                 : {len(star) / t_ours:10.0f} packets/s {smb / t_ours:7.1f} MB/s "
        "(with CRC check and decompression)"
    )
    print(
        f"ccsdspy VariableLength      : {len(star) / t_cc:10.0f} packets/s {smb / t_cc:7.1f} MB/s "
        "(fields and raw payload bytes only: no CRC, no decompression, no resync)"
    )
    print(
        f"decode_packet loop (est.)   : {len(star) / t_loop:10.0f} packets/s {smb / t_loop:7.1f} MB/s "
        f"(from {k} packets)"
    )
    print(f"speed-up of decode_pass: x{t_cc / t_ours:.1f} over ccsdspy, x{t_loop / t_ours:.1f} over the loop")
    if args.passes:
        simulator_passes(args.passes)
    print(f"\ntotal bench time {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
