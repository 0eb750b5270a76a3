"""Checks dispatch and audit from another language: Python grpcio stubs generated from proto/.

Against a citd in scenario-clock mode with a fresh store: watches the fleet (WatchFleet) while a
multi-stop scenario of ../shared/data/scenarios plays, checks the watcher saw a snapshot, the
run's changes and every anomaly; acknowledges and resolves each anomaly (and sees that live);
then reads, replays, verifies, re-detects, takes the state at an anomaly's time, exports
(GeoJSON parsed with shapely, GPX and CSV parsed) and renders the run (SVG parsed; with
--browser, drawn by headless Chromium to a PNG).

    pip install grpcio grpcio-tools shapely
    python3 loadtest/python/audit_check.py --addr 127.0.0.1:50051 --cit target/release/cit \
        --out /tmp/cit-audit-check [--browser /usr/bin/chromium]

loadtest/python/run-audit-check.sh does all of it (installs, builds, starts citd).
"""
import argparse
import csv
import io
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from api_check import SHARED, generate  # noqa: E402


def fail(msg):
    sys.exit(f"FAIL: {msg}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:50051")
    ap.add_argument("--cit", default="target/release/cit", help="the cit binary, to play the scenario")
    ap.add_argument("--scenario", default=str(SHARED / "scenarios" / "gbg-cit01-full.json"))
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="cit-audit-"))
    ap.add_argument("--browser", help="a Chromium binary: draw the SVG headless to a PNG")
    ap.add_argument("--pki", required=True, help="the development PKI of the citd (cit pki init)")
    args = ap.parse_args()
    stubs = tempfile.mkdtemp(prefix="cit-py-")
    generate(stubs)
    from cit.v1 import audit_pb2, audit_pb2_grpc, common_pb2, dispatch_pb2, dispatch_pb2_grpc

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # TLS trusting the PKI's CA; every call with the token of a dispatcher who also audits.
    from api_check import token
    tok = token(args.cit, args.pki, "py-dispatcher", "dispatcher", "supervisor", "auditor")
    ca = (pathlib.Path(args.pki) / "ca.pem").read_bytes()
    creds = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(root_certificates=ca),
                                               grpc.access_token_call_credentials(tok))
    ch = grpc.secure_channel(args.addr, creds)
    dispatch = dispatch_pb2_grpc.DispatchStub(ch)
    audit = audit_pb2_grpc.AuditStub(ch)
    scenario = json.loads(pathlib.Path(args.scenario).read_text())
    run_id = scenario["runs"][0]["id"]

    # Watch before anything happens; collect in a thread.
    seen = []
    watch = dispatch.WatchFleet(dispatch_pb2.WatchFleetRequest())

    def collect():
        try:
            for ev in watch:
                seen.append(ev)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                seen.append(e)

    t = threading.Thread(target=collect, daemon=True)
    t.start()

    started = time.time()
    played = subprocess.run([args.cit, "scenario", "run", args.scenario, "--addr", args.addr, "--pki", args.pki],
                            capture_output=True, text=True)
    if played.returncode != 0:
        fail(f"playing the scenario: {played.stderr}")
    print(f"played {scenario['name']} in {time.time() - started:.1f} s")

    anomalies = dispatch.ListAnomalies(dispatch_pb2.ListAnomaliesRequest(run_id=run_id, include_resolved=True)).anomalies
    if not anomalies:
        fail("the scenario raised no anomaly")
    ids = {a.id for a in anomalies}

    def wait_for(pred, what, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred():
                return
            time.sleep(0.05)
        fail(f"the watcher did not see {what} within {timeout} s")

    watched = lambda: {e.anomaly.id for e in list(seen) if not isinstance(e, Exception) and e.WhichOneof("event") == "anomaly"}
    wait_for(lambda: ids <= watched(), "every anomaly")
    first = seen[0]
    if isinstance(first, Exception) or first.WhichOneof("event") != "snapshot":
        fail(f"the first watch message is not a snapshot: {first}")
    names = {}  # run number -> run id, as this stream named them (runs_named)
    def changes_of(e):
        kind = e.WhichOneof("event")
        if kind == "run_changed":
            return [e.run_changed] if e.run_changed.run_id == run_id else []
        if kind == "runs_named":
            names.update(zip(e.runs_named.run, e.runs_named.run_id))
        if kind == "runs_moved":  # a batch of position updates, a column per field, runs by number
            b = e.runs_moved
            if any(r not in names for r in b.run):
                fail(f"a runs_moved uses a run number not named before it: {list(b.run)}")
            return [(lat, lon) for r, lat, lon in zip(b.run, b.lat_e7, b.lon_e7) if names[r] == run_id]
        return []

    changes = [c for e in list(seen) if not isinstance(e, Exception) for c in changes_of(e)]
    if not changes:
        fail("no run change watched")
    print(f"watched: snapshot, {len(changes)} changes of {run_id}, {len(ids)} anomalies")

    # The workflow, seen live.
    for a in anomalies:
        dispatch.AcknowledgeAnomaly(dispatch_pb2.AcknowledgeAnomalyRequest(anomaly_id=a.id, by="py-dispatcher"))
        dispatch.ResolveAnomaly(dispatch_pb2.ResolveAnomalyRequest(anomaly_id=a.id, by="py-dispatcher", outcome="handled", note="audit check"))
    resolved = lambda: {e.anomaly.id for e in list(seen) if not isinstance(e, Exception) and e.WhichOneof("event") == "anomaly"
                        and e.anomaly.status == common_pb2.ANOMALY_STATUS_RESOLVED}
    wait_for(lambda: ids <= resolved(), "every anomaly resolved")
    listed = dispatch.ListAnomalies(dispatch_pb2.ListAnomaliesRequest(run_id=run_id, include_resolved=True)).anomalies
    if any(a.status != common_pb2.ANOMALY_STATUS_RESOLVED or a.resolved_by != "py-dispatcher" for a in listed):
        fail("not every anomaly is resolved by py-dispatcher")
    print(f"acknowledged and resolved {len(listed)} anomalies; the watcher saw each")

    # The auditor.
    events = list(audit.ReadRun(audit_pb2.ReadRunRequest(run_id=run_id)))
    replayed = list(audit.ReplayRun(audit_pb2.ReplayRunRequest(run_id=run_id, speed=0)))
    if [e.event_id for e in events] != [e.event_id for e in replayed]:
        fail("replay differs from the record")
    custody = list(audit.ReadRun(audit_pb2.ReadRunRequest(run_id=run_id, include_custody=True)))
    if not any(e.event_type == "WeaponIssued.v1" for e in custody):
        fail("custody events missing")
    if any(b.log_position <= a.log_position for a, b in zip(custody, custody[1:])):
        fail("events out of log order")
    v = audit.VerifyRun(audit_pb2.VerifyRunRequest(run_id=run_id))
    if not v.ok:
        fail(f"verify: {v.reason}")
    r = audit.RedetectRun(audit_pb2.RedetectRunRequest(run_id=run_id))
    if not r.reproduced:
        fail(f"re-detection differs: {list(r.differences)}")
    a0 = anomalies[0]
    state = audit.StateAt(audit_pb2.StateAtRequest(run_id=run_id, at=a0.at))
    if a0.id not in {a.id for a in state.open_anomalies}:
        fail("StateAt at the anomaly's time does not show it")
    print(f"read {len(events)} events ({len(custody)} with custody), replayed, verified ({v.events_checked} events), "
          f"re-detected {len(r.redetected_anomaly_ids)} anomalies exactly, StateAt ok")

    # Exports, opened by standard tools.
    from shapely.geometry import shape
    geo = audit.ExportRun(audit_pb2.ExportRunRequest(run_id=run_id, format=audit_pb2.EXPORT_FORMAT_GEOJSON))
    (out / "run.geojson").write_bytes(geo.content)
    doc = json.loads(geo.content)
    layers = {}
    for f in doc["features"]:
        if f["geometry"] is not None:
            g = shape(f["geometry"])
            if not g.is_valid:
                fail(f"invalid geometry in layer {f['properties']['layer']}")
            layers.setdefault(f["properties"]["layer"], []).append(g)
    if layers["route"][0].geom_type != "LineString" or layers["track"][0].length <= 0:
        fail("route or track missing")
    if "OpenStreetMap" not in doc.get("attribution", ""):
        fail("GeoJSON without the ODbL attribution")
    gpx = audit.ExportRun(audit_pb2.ExportRunRequest(run_id=run_id, format=audit_pb2.EXPORT_FORMAT_GPX))
    (out / "run.gpx").write_bytes(gpx.content)
    ns = {"g": "http://www.topografix.com/GPX/1/1"}
    trkpts = ET.fromstring(gpx.content).findall(".//g:trkpt", ns)
    rows = list(csv.DictReader(io.StringIO(audit.ExportRun(audit_pb2.ExportRunRequest(
        run_id=run_id, format=audit_pb2.EXPORT_FORMAT_CSV)).content.decode())))
    if len(trkpts) != len(rows) or not rows:
        fail(f"GPX has {len(trkpts)} track points, CSV {len(rows)} rows")
    print(f"GeoJSON: {', '.join(f'{k} x{len(v)}' for k, v in sorted(layers.items()))} (shapely: valid); "
          f"GPX {len(trkpts)} track points; CSV {len(rows)} rows")

    svg = audit.RenderRun(audit_pb2.RenderRunRequest(run_id=run_id, width_px=1200)).svg
    (out / "run.svg").write_text(svg)
    root = ET.fromstring(svg)
    if not root.tag.endswith("svg") or "OpenStreetMap contributors" not in svg:
        fail("SVG without its root or its attribution")
    print(f"SVG {len(svg)} bytes written to {out / 'run.svg'}")
    if args.browser:
        png = out / "run.png"
        subprocess.run([args.browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
                        "--window-size=1200,940", (out / "run.svg").as_uri()], check=True, capture_output=True, timeout=120)
        if not png.exists() or png.stat().st_size < 10_000:
            fail("the browser drew nothing")
        print(f"Chromium drew the SVG: {png} ({png.stat().st_size} bytes)")
    watch.cancel()
    print("OK")


if __name__ == "__main__":
    main()
