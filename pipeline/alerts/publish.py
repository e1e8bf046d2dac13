"""Publication of alerts: the alerts index CSV, a light curve CSV and a VOEvent 2.0 packet per alert.

`publish` moves every assessed candidate to published (names given in candidate order, one transaction:
pipeline.alerts.candidates.publish_assessed), then `write_publication` writes every published alert into
an output directory:

    alerts.csv                the index, in the format of the real Gaia index (../shared/data/gaia-alerts/
                              alerts.csv, see its README): the header line with its leading spaces, newest
                              alert first, Class and Comment always double-quoted ("" inside), RA/Dec with 5
                              decimals, magnitudes with 2, HistoricMag/HistoricStdDev empty where unknown
                              (new sources), UTC times YYYY-MM-DD HH:MM:SS, TNSid empty, and one empty line
                              at the end
    lightcurves/<Name>.csv    the Gaia light-curve format (lightcurves/*.csv there): the name, the header
                              `#Date,JD,averagemag.`, one row per transit of the source held in the Main
                              Database (UTC date, JD of that date with 3 decimals, G with 2 decimals, `null`
                              where no usable magnitude, `untrusted` where a quality flag is set), and one
                              empty line at the end
    voevents/<Name>.xml       a VOEvent 2.0 packet: ivorn ivo://<authority>/alerts#<Name>, Who (author,
                              publication date), What (magnitudes, detector, significance), WhereWhen (ICRS
                              position and the triggering transit's UTC time), How, Why (the class, the
                              comment); checked by check_voevent before it is written

Everything written is a function of the database's content: times are the triggering transit's and the
recorded publication time (alert_names.assigned_at), never the time of writing, so publishing again writes
byte-identical files (files whose bytes are unchanged are not rewritten). Files are written to a temporary
name and renamed, so a reader never sees half a file. Mission time -> UTC: pipeline.mission_time.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg

from pipeline.alerts.candidates import Candidate, list_candidates, publish_assessed
from pipeline.alerts.names import sort_key
from pipeline.alerts.thresholds import Thresholds, load_thresholds
from pipeline.mission_time import julian_date, to_utc

INDEX_HEADER = (
    "#Name, Date, RaDeg, DecDeg, AlertMag, HistoricMag, HistoricStdDev, Class, Published, Comment, TNSid"
)
LIGHTCURVE_HEADER = "#Date,JD,averagemag."
VOEVENT_NS = "http://www.ivoa.net/xml/VOEvent/v2.0"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
VOEVENT_XSD_URL = "http://www.ivoa.net/xml/VOEvent/VOEvent-v2.0.xsd"
DEFAULT_AUTHORITY = "soc.invalid"  # override: --authority or $SOC_ALERTS_AUTHORITY
OBSERVATORY = "GAIA"
COORD_SYSTEM = "UTC-ICRS-TOPO"  # UTC times (mission time), ICRS positions, seen from the spacecraft
XSD_ENV = "SOC_VOEVENT_XSD"  # a local copy of VOEvent-v2.0.xsd: with lxml, packets are schema-validated

ET.register_namespace("voe", VOEVENT_NS)
ET.register_namespace("xsi", XSI_NS)


class PublishError(ValueError):
    """Something that cannot be published as it is (the message names the alert and the problem)."""


class VOEventError(PublishError):
    """A packet that is not a valid VOEvent 2.0 document."""


@dataclass
class PublishReport:
    published: list[tuple[int, str]] = field(default_factory=list)  # (candidate_id, name) published now
    alerts: int = 0  # alerts in the index
    written: list[Path] = field(default_factory=list)  # files whose bytes changed
    unchanged: int = 0
    validated_with: str = ""  # "VOEvent 2.0 schema (lxml)" or "structure (xml.etree)"


# --------------------------------------------------------------------------------------- formats


def utc_text(t: float) -> str:
    """UTC mission seconds -> 'YYYY-MM-DD HH:MM:SS' (whole seconds, truncated)."""
    return str(np.datetime_as_string(to_utc(np.floor(float(t))), unit="s")).replace("T", " ")


def _utc_datetime_text(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fixed(x: float | None, decimals: int) -> str:
    """A number with fixed decimals, '' for None/NaN, never '-0.00'."""
    if x is None or not np.isfinite(x):
        return ""
    text = f"{x:.{decimals}f}"
    return text[1:] if re.fullmatch(r"-0\.0*", text) else text


def _quoted(text: str) -> str:
    """A double-quoted CSV field on one line (quotes doubled, line breaks made spaces)."""
    return '"' + re.sub(r"[\r\n]+", " ", text).replace('"', '""') + '"'


def default_comment(c: Candidate) -> str:
    """The index Comment when the assessment gave none: what the detector saw."""
    if c.detector == "new_source":
        return f"new source at G = {c.alert_mag:.2f} ({c.significance:.1f} sigma)"
    delta = abs(c.alert_mag - c.historic_mag) if c.historic_mag is not None else float("nan")
    verb = "brightens" if c.detector == "brightening" else "fades"
    return f"{verb} by {delta:.2f} mag ({c.significance:.1f} sigma)"


def _published(c: Candidate) -> tuple[str, datetime]:
    """(name, publication time) of a published alert; PublishError for a candidate that is not one."""
    if c.name is None or c.published_at is None:
        raise PublishError(f"alert candidate {c.candidate_id} is not published (status {c.status})")
    return c.name, c.published_at


def index_row(c: Candidate) -> str:
    name, published_at = _published(c)
    return ",".join([
        name, utc_text(c.t_trigger), _fixed(c.ra, 5), _fixed(c.dec, 5), _fixed(c.alert_mag, 2),
        _fixed(c.historic_mag, 2), _fixed(c.historic_std, 2), _quoted(c.alert_class),
        _utc_datetime_text(published_at), _quoted(c.comment or default_comment(c)), "",
    ])  # fmt: skip


def format_index(alerts: list[Candidate]) -> str:
    """The index CSV: header, newest alert first (the real index's order), one empty line at the end."""
    rows = sorted(alerts, key=lambda c: sort_key(_published(c)[0]), reverse=True)
    return "".join(f"{line}\n" for line in [INDEX_HEADER, *(index_row(c) for c in rows)]) + "\n"


def format_lightcurve(name: str, t, g_mag, flags, th: Thresholds) -> str:
    """The Gaia light-curve CSV of one alert (rows sorted by time)."""
    t = np.asarray(t, dtype=float)
    g = np.asarray(g_mag, dtype=float)
    flags = np.asarray(flags, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    lines = [name, LIGHTCURVE_HEADER]
    for k in order:
        whole = np.floor(t[k])
        if not np.isfinite(g[k]) or flags[k] & th.failure_flags:
            mag = "null"
        elif flags[k] & th.quality_flags:
            mag = "untrusted"
        else:
            mag = f"{g[k]:.2f}"
        lines.append(f"{utc_text(whole)},{float(julian_date(whole)):.3f},{mag}")
    return "".join(f"{line}\n" for line in lines) + "\n"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def voevent(c: Candidate, authority: str, position_error_deg: float) -> bytes:
    """The VOEvent 2.0 packet of a published alert."""
    if c.name is None or c.published_at is None:
        raise PublishError(f"alert candidate {c.candidate_id} is not published (status {c.status})")
    root = ET.Element(f"{{{VOEVENT_NS}}}VOEvent", {
        "ivorn": f"ivo://{authority}/alerts#{c.name}", "role": "observation", "version": "2.0",
        f"{{{XSI_NS}}}schemaLocation": f"{VOEVENT_NS} {VOEVENT_XSD_URL}",
    })  # fmt: skip
    who = _sub(root, "Who")
    _sub(who, "AuthorIVORN", f"ivo://{authority}")
    _sub(who, "Date", c.published_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    author = _sub(who, "Author")
    _sub(author, "title", "Photometric science alerts of the Science Operations Centre")
    _sub(author, "shortName", "SOC alerts")

    what = _sub(root, "What")
    _sub(what, "Description", f"Photometric science alert {c.name}, G = {c.alert_mag:.2f}")
    _sub(what, "Param", name="alert_name", dataType="string", ucd="meta.id", value=c.name)
    _sub(what, "Param", name="source_id", dataType="string", ucd="meta.id", value=str(c.source_id))
    _sub(what, "Param", name="detector", dataType="string", ucd="meta.code", value=c.detector)
    _sub(what, "Param", name="significance", dataType="float", ucd="stat.snr",
         value=_fixed(c.significance, 1))  # fmt: skip
    alert = _sub(what, "Group", name="alert-magnitude")
    _sub(alert, "Param", name="averagemag", dataType="float", ucd="phot.mag", unit="mag",
         value=_fixed(c.alert_mag, 2))  # fmt: skip
    historic = _sub(what, "Group", name="historic-magnitude")
    _sub(historic, "Param", name="averagemag", dataType="float", ucd="phot.mag", unit="mag",
         value=_fixed(c.historic_mag, 2))  # fmt: skip
    _sub(historic, "Param", name="averagemag scatter", dataType="float", ucd="phot.mag;stat.stdev",
         unit="mag", value=_fixed(c.historic_std, 2))  # fmt: skip
    _sub(what, "Param", name="timescale", dataType="string", ucd="time.scale", value="UTC")
    _sub(what, "Param", name="band", dataType="string", ucd="instr.bandpass", value="G")

    where = _sub(root, "WhereWhen")
    obs = _sub(where, "ObsDataLocation")
    _sub(obs, "ObservatoryLocation", id=OBSERVATORY)
    loc = _sub(obs, "ObservationLocation")
    _sub(loc, "AstroCoordSystem", id=COORD_SYSTEM)
    coords = _sub(loc, "AstroCoords", coord_system_id=COORD_SYSTEM)
    time_ = _sub(coords, "Time", unit="s")
    _sub(_sub(time_, "TimeInstant"), "ISOTime", utc_text(c.t_trigger).replace(" ", "T"))
    pos = _sub(coords, "Position2D", unit="deg")
    _sub(pos, "Name1", "RA")
    _sub(pos, "Name2", "Dec")
    value2 = _sub(pos, "Value2")
    _sub(value2, "C1", _fixed(c.ra, 5))
    _sub(value2, "C2", _fixed(c.dec, 5))
    _sub(pos, "Error2Radius", f"{position_error_deg:.3e}")

    how = _sub(root, "How")
    _sub(how, "Description", f"Detected by the {c.detector} detector of the SOC daily alerts run")
    why = _sub(root, "Why")
    _sub(why, "Concept", c.alert_class)
    _sub(why, "Description", c.comment or default_comment(c))
    ET.indent(root, "  ")
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n"


# --------------------------------------------------------------------------------------- checks


_ROLES = {"observation", "prediction", "utility", "test"}
_TOP = ("Who", "What", "WhereWhen", "How", "Why", "Citations", "Description", "Reference")
_COORD_SYSTEMS = {
    f"{t}-{f}-{o}" for t in ("TT", "UTC", "GPS") for f in ("ICRS", "FK5") for o in ("TOPO", "GEO")
} | {"TDB-ICRS-BARY", "TDB-FK5-BARY", "UTC-GEOD-TOPO"}
_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


def check_voevent(data: bytes, xsd: str | Path | None = None) -> str:
    """Raise VOEventError unless data is a valid VOEvent 2.0 packet -> how it was checked.

    With lxml installed and the schema file at hand (xsd, else $SOC_VOEVENT_XSD), against the VOEvent 2.0
    schema; otherwise it is parsed with xml.etree and the schema's rules that matter here are checked:
    root element and attributes, at most one of each section, Who's date, WhereWhen's required chain down
    to a position with numeric coordinates and error, Param data types, and a Why.
    """
    xsd = xsd or os.environ.get(XSD_ENV)
    if xsd:
        try:
            from lxml import etree
        except ImportError:
            etree = None
        if etree is not None:
            schema = etree.XMLSchema(etree.parse(str(xsd)))
            doc = etree.fromstring(data)
            if not schema.validate(doc):
                raise VOEventError(f"not valid VOEvent 2.0: {schema.error_log.last_error}")
            return "VOEvent 2.0 schema (lxml)"
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise VOEventError(f"not well-formed XML: {exc}") from None
    problems = _structure_problems(root)
    if problems:
        raise VOEventError("not valid VOEvent 2.0: " + "; ".join(problems))
    return "structure (xml.etree)"


def _float(text: str | None) -> bool:
    try:
        float(text or "")
    except ValueError:
        return False
    return True


def _structure_problems(root: ET.Element) -> list[str]:
    out = []
    if root.tag != f"{{{VOEVENT_NS}}}VOEvent":
        return [f"root element is {root.tag}, not VOEvent in {VOEVENT_NS}"]
    if root.get("version") != "2.0":
        out.append(f"version is {root.get('version')!r}, not '2.0'")
    if not re.match(r"^ivo://[^/#\s]+", root.get("ivorn", "")):
        out.append(f"ivorn {root.get('ivorn')!r} is not an ivo:// URI")
    if root.get("role", "observation") not in _ROLES:
        out.append(f"role {root.get('role')!r} is not one of {sorted(_ROLES)}")
    tags = [child.tag for child in root]
    for tag in tags:
        if tag not in _TOP:
            out.append(f"unexpected element {tag} in VOEvent")
    out += [f"more than one {t}" for t in _TOP if tags.count(t) > 1]
    who = root.find("Who")
    if who is not None:
        if who.find("AuthorIVORN") is None and who.find("Author") is None:
            out.append("Who has neither AuthorIVORN nor Author")
        date = who.findtext("Date")
        if date is not None and not _DATETIME.match(date):
            out.append(f"Who/Date {date!r} is not an xs:dateTime")
    ww = root.find("WhereWhen")
    if ww is not None:
        base = "ObsDataLocation/ObservationLocation"
        for path in (
            "ObsDataLocation/ObservatoryLocation",
            f"{base}/AstroCoordSystem",
            f"{base}/AstroCoords",
        ):
            if ww.find(path) is None:
                out.append(f"WhereWhen has no {path}")
        system = ww.find(f"{base}/AstroCoordSystem")
        if system is not None and system.get("id") not in _COORD_SYSTEMS:
            out.append(f"AstroCoordSystem id {system.get('id')!r} is not one of the schema's")
        pos = ww.find(f"{base}/AstroCoords/Position2D")
        if pos is not None:
            for path in ("Value2/C1", "Value2/C2", "Error2Radius"):
                if not _float(pos.findtext(path)):
                    out.append(f"Position2D/{path} is missing or not a number")
        iso = ww.findtext(f"{base}/AstroCoords/Time/TimeInstant/ISOTime")
        if iso is not None and not _DATETIME.match(iso):
            out.append(f"ISOTime {iso!r} is not an ISO date and time")
    for param in root.iter("Param"):
        if param.get("dataType", "string") not in ("string", "float", "int"):
            out.append(f"Param {param.get('name')!r} has dataType {param.get('dataType')!r}")
    why = root.find("Why")
    if why is None or not any(why.findtext(t) for t in ("Name", "Concept", "Description")):
        out.append("no Why with the alert's class")
    return out


# --------------------------------------------------------------------------------------- writing


def _write(path: Path, data: bytes, report: PublishReport) -> None:
    if path.exists() and path.read_bytes() == data:
        report.unchanged += 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    report.written.append(path)


def _source_transits(conn: psycopg.Connection, c: Candidate):
    rows = conn.execute(
        "SELECT t, coalesce(g_mag, 'NaN')::float8, flags, coalesce(pos_err_mas, 'NaN')::float8"
        " FROM transits WHERE healpix = %s::integer AND source_id = %s ORDER BY t",
        (c.healpix, c.source_id),
        prepare=False,  # planned for this pixel: see pipeline.alerts.scan._array
    ).fetchall()
    if not rows:
        raise PublishError(f"{c.name}: source {c.source_id} has no transits in the Main Database")
    a = np.array(rows, dtype=float)
    return a[:, 0], a[:, 1], a[:, 2].astype(np.int64), a[:, 3]


def _position_error_deg(t, pos_err_mas, t_trigger: float) -> float:
    """The triggering transit's position error (else the source's median), in degrees; 1 arcsec when the
    database has none."""
    at = np.flatnonzero(t == t_trigger)
    err = pos_err_mas[at] if len(at) else pos_err_mas
    err = err[np.isfinite(err)]
    return float(np.median(err)) / 3.6e6 if len(err) else 1.0 / 3600.0


def write_publication(
    conn: psycopg.Connection,
    out_dir: str | Path,
    authority: str = DEFAULT_AUTHORITY,
    thresholds: Thresholds | None = None,
    xsd: str | Path | None = None,
) -> PublishReport:
    """Write the index, the light curves and the VOEvents of every published alert into out_dir."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._~-]*(/[A-Za-z0-9._~-]+)*", authority):
        raise PublishError(f"authority {authority!r} is not an IVOA authority id (e.g. soc.example.org)")
    th = thresholds or load_thresholds()
    out = Path(out_dir)
    report = PublishReport()
    alerts = list_candidates(conn, status="published")
    missing = [c.candidate_id for c in alerts if c.name is None]
    if missing:
        raise PublishError(f"published alert candidate(s) without a name: {missing}")
    for c in sorted(alerts, key=lambda c: c.candidate_id):
        name = c.name
        assert name is not None  # checked above (missing)
        t, g, flags, pos_err = _source_transits(conn, c)
        _write(out / "lightcurves" / f"{name}.csv", format_lightcurve(name, t, g, flags, th).encode(), report)
        packet = voevent(c, authority, _position_error_deg(t, pos_err, c.t_trigger))
        try:
            report.validated_with = check_voevent(packet, xsd)
        except VOEventError as exc:
            raise VOEventError(f"{name}: {exc}") from None
        _write(out / "voevents" / f"{name}.xml", packet, report)
    _write(out / "alerts.csv", format_index(alerts).encode(), report)
    report.alerts = len(alerts)
    return report


def publish(
    conn: psycopg.Connection,
    out_dir: str | Path,
    who: str,
    authority: str = DEFAULT_AUTHORITY,
    thresholds: Thresholds | None = None,
    xsd: str | Path | None = None,
) -> PublishReport:
    """Publish every assessed candidate (names in candidate order), then write every published alert."""
    published = publish_assessed(conn, who)
    report = write_publication(conn, out_dir, authority, thresholds, xsd)
    report.published = published
    return report
