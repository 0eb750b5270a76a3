"""Checks the public API from another language: Python grpcio stubs generated from proto/.

Registers a vehicle, crew and armory, plans and departs a run on a real Gothenburg route,
streams 10,000 fixes with bad ones mixed in (each must come back rejected with a reason), then
reads the run back: every good fix once, in order. Errors are decoded the way standard clients
do (grpc_status.rpc_status.from_call): a refusal's ErrorInfo and its packed cit.v1.Refusal, an
invalid argument's BadRequest naming the field.

Every call goes with a credential over TLS, as in production: the development PKI's CA is
trusted, its gateway certificate sends the fixes, and each person's token (minted by
`cit token mint`) goes with what that person does; the weapon issue with the two co-signers'
tokens as `cit-cosign` metadata.

    pip install grpcio grpcio-tools grpcio-status
    cit pki init /tmp/cit-pki      # then start citd with the flags it prints (wall clock)
    python3 loadtest/python/api_check.py --addr 127.0.0.1:50051 --pki /tmp/cit-pki --cit target/release/cit
"""
import argparse
import functools
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def generate(out):
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "cit" / "v1").glob("*.proto"))
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)


def token(cit, pki, person, *roles):
    """A bearer token for `person` with `roles`, signed by the PKI's key (`cit token mint`)."""
    out = subprocess.run([cit, "token", "mint", "--pki", pki, "--person", person, "--roles", ",".join(roles)],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def secure_channel(addr, pki):
    """TLS to citd, trusting the PKI's CA and presenting its gateway's certificate (fixes)."""
    pki = pathlib.Path(pki)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "gateway-scenario-gateway.key.pem").read_bytes(),
        certificate_chain=(pki / "gateway-scenario-gateway.pem").read_bytes())
    return grpc.secure_channel(addr, creds)


def as_(tok, *cosigners):
    """Call metadata: the caller's token and co-signers' tokens."""
    return [("authorization", f"Bearer {tok}")] + [("cit-cosign", c) for c in cosigners]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:50051")
    ap.add_argument("--fixes", type=int, default=10_000)
    ap.add_argument("--pki", required=True, help="the development PKI of the citd (cit pki init)")
    ap.add_argument("--cit", default="target/release/cit", help="the cit binary, to mint tokens")
    args = ap.parse_args()
    mint = functools.partial(token, args.cit, args.pki)
    out = tempfile.mkdtemp(prefix="cit-py-")
    generate(out)
    from cit.v1 import (armory_pb2, armory_pb2_grpc, audit_pb2, audit_pb2_grpc, common_pb2, identity_pb2,
                        identity_pb2_grpc, runs_pb2, runs_pb2_grpc, telemetry_pb2, telemetry_pb2_grpc)
    from google.protobuf.timestamp_pb2 import Timestamp

    ch = secure_channel(args.addr, args.pki)
    identity = identity_pb2_grpc.IdentityStub(ch)
    runs = runs_pb2_grpc.RunsStub(ch)
    armory = armory_pb2_grpc.ArmoryStub(ch)
    telemetry = telemetry_pb2_grpc.TelemetryStub(ch)
    audit = audit_pb2_grpc.AuditStub(ch)
    tag = str(int(time.time()))
    run_id, vehicle = f"PY-R-{tag}", f"PY-V-{tag}"

    admin = as_(mint("py-admin", "admin"))
    dispatcher = as_(mint("py-dispatcher", "dispatcher"))
    auditor = as_(mint("py-auditor", "auditor"))
    gc, ac, ap_ = mint(f"GC-{tag}", "gun_custodian"), mint(f"AC-{tag}", "ammo_custodian"), mint(f"AP-{tag}", "approver")
    # Without a token, a call on this connection is the gateway's (its certificate): a gateway
    # may not read the registry of people.
    try:
        runs.ListPeople(common_pb2.ListPage())
        sys.exit("the gateway read the people")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.code()
    runs.RegisterVehicle(runs_pb2.RegisterVehicleRequest(vehicle_id=vehicle, plate="PY 1", armoured=True), metadata=admin)
    identity.BindUnit(identity_pb2.BindUnitRequest(unit_id="scenario-gateway", gateway=True, vehicle_ids=[vehicle]), metadata=admin)
    people = {"D": runs_pb2.ROLE_DRIVER, "E1": runs_pb2.ROLE_ESCORT, "E2": runs_pb2.ROLE_ESCORT,
              "GC": runs_pb2.ROLE_GUN_CUSTODIAN, "AC": runs_pb2.ROLE_AMMO_CUSTODIAN, "AP": runs_pb2.ROLE_APPROVER}
    for pid, role in people.items():
        runs.RegisterPerson(runs_pb2.RegisterPersonRequest(person_id=f"{pid}-{tag}", name=pid, role=role), metadata=admin)
    route = json.loads((SHARED / "gothenburg" / "routes" / "GBG-R001.geojson").read_text())["features"][0]["geometry"]["coordinates"]
    runs.PlanRun(runs_pb2.PlanRunRequest(
        run_id=run_id, vehicle_id=vehicle, driver_id=f"D-{tag}", escort_ids=[f"E1-{tag}", f"E2-{tag}"],
        route=[common_pb2.LatLon(lat=c[1], lon=c[0]) for c in route], corridor_m=60.0), metadata=dispatcher)
    armory.RegisterAmmoLot(armory_pb2.RegisterAmmoLotRequest(lot=f"A-{tag}", rounds=100), metadata=as_(ac))
    for e in ("E1", "E2"):
        serial = f"G-{e}-{tag}"
        armory.RegisterWeapon(armory_pb2.RegisterWeaponRequest(serial=serial, kind="pistol"), metadata=as_(gc))
        # R3 by three credentials: the gun custodian calls, the others co-sign.
        armory.IssueWeapon(armory_pb2.IssueWeaponRequest(run_id=run_id, serial=serial, lot=f"A-{tag}", rounds=30,
                                                         to=f"{e}-{tag}", gun_custodian=f"GC-{tag}", ammo_custodian=f"AC-{tag}", approver=f"AP-{tag}"),
                           metadata=as_(gc, ac, ap_))
        runs.EscortReady(runs_pb2.EscortReadyRequest(run_id=run_id, person_id=f"{e}-{tag}", weapon_serial=serial, vest=True, helmet=True),
                         metadata=as_(mint(f"{e}-{tag}", "escort")))
    runs.Depart(runs_pb2.DepartRequest(run_id=run_id), metadata=dispatcher)

    # Fixes: good ones along the route, every 97th one bad in a different way.
    bad_kinds = ["lat", "seq", "time", "accuracy_m"]
    batches, expected_bad, good = [], 0, []
    seq = 0
    fixes = []
    for i in range(args.fixes):
        c = route[i % len(route)]
        now = Timestamp()
        now.GetCurrentTime()
        f = telemetry_pb2.Fix(vehicle_id=vehicle, time=now, lat=c[1], lon=c[0], speed_mps=10.0,
                              heading_deg=90.0, accuracy_m=5.0, ignition=True)
        if i % 97 == 50:
            kind = bad_kinds[expected_bad % len(bad_kinds)]
            expected_bad += 1
            f.seq = seq + 1
            if kind == "lat":
                f.lat = math.nan
            elif kind == "seq":
                f.seq = 0
            elif kind == "time":
                f.ClearField("time")
            else:
                f.accuracy_m = -1.0
        else:
            seq += 1
            f.seq = seq
            good.append(seq)
        fixes.append(f)
        if len(fixes) == 500:
            batches.append(telemetry_pb2.FixBatch(fixes=fixes, batch_id=len(batches) + 1))
            fixes = []
    if fixes:
        batches.append(telemetry_pb2.FixBatch(fixes=fixes, batch_id=len(batches) + 1))

    rejected, durable = [], 0
    for ack in telemetry.StreamFixes(iter(batches)):
        rejected.extend(ack.rejected)
        for a in ack.acks:
            durable = max(durable, a.durable_seq)
    assert len(rejected) == expected_bad, (len(rejected), expected_bad)
    assert all(r.field and r.reason for r in rejected), rejected[:3]
    assert durable == good[-1], (durable, good[-1])

    seqs = []
    for e in audit.ReadRun(audit_pb2.ReadRunRequest(run_id=run_id), metadata=auditor):
        if e.event_type == "FixesRecorded.v1":
            seqs.extend(f["seq"] for f in json.loads(e.data_json)["fixes"])
    assert seqs == good, f"read back {len(seqs)} fixes, expected {len(good)} in order"
    # The richer error model, read by the standard decoder.
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    def status_of(call):
        try:
            call()
        except grpc.RpcError as e:
            return e.code(), rpc_status.from_call(e)
        sys.exit("FAIL: the call was expected to fail")

    runs.RegisterVehicle(runs_pb2.RegisterVehicleRequest(vehicle_id=f"CAR-{tag}", plate="PY 2", armoured=False), metadata=admin)
    code, st = status_of(lambda: runs.PlanRun(runs_pb2.PlanRunRequest(
        run_id=f"{run_id}-car", vehicle_id=f"CAR-{tag}", driver_id=f"D-{tag}",
        escort_ids=[f"E1-{tag}", f"E2-{tag}"], route=[common_pb2.LatLon(lat=c[1], lon=c[0]) for c in route]), metadata=dispatcher))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, code
    info, refusal = error_details_pb2.ErrorInfo(), common_pb2.Refusal()
    assert any(d.Unpack(info) for d in st.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)), st
    assert any(d.Unpack(refusal) for d in st.details if d.Is(common_pb2.Refusal.DESCRIPTOR)), st
    assert info.reason == "R1" and refusal.rule == "R1", (info, refusal)
    code, st = status_of(lambda: runs.PlanRun(runs_pb2.PlanRunRequest(
        run_id=f"{run_id}-short", vehicle_id=vehicle, driver_id=f"D-{tag}",
        escort_ids=[f"E1-{tag}", f"E2-{tag}"], route=[common_pb2.LatLon(lat=route[0][1], lon=route[0][0])]), metadata=dispatcher))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, code
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in st.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)), st
    assert bad.field_violations[0].field == "route", bad

    print(f"python api check: {len(good)} fixes read back in order, nothing missing or doubled; "
          f"{len(rejected)} bad fixes rejected with reasons (e.g. {rejected[0].field}: {rejected[0].reason}); "
          f"errors decoded by rpc_status.from_call ({info.reason} in ErrorInfo, BadRequest on {bad.field_violations[0].field})")
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
