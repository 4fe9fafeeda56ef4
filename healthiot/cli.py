"""The ``healthiot`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from devices.identity import MODELS
from healthiot import logs
from healthiot.errors import HealthiotError
from healthiot.settings import Settings, load


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):  # NaN fails both
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="healthiot", description="Health-IoT ingestion backend: devices over MQTT/mTLS, "
        "encrypted time series, patient API. Settings come from HEALTHIOT_* variables.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the embedded stack with a demo fleet (make run)")
    run.add_argument("--duration", type=_positive, default=None,
                     help="stop after this many seconds and print a summary line")

    sim = sub.add_parser("simulate", help="run the embedded stack with a fleet of simulated "
                         "devices, then report what each sent and what was stored")
    sim.add_argument("--devices", type=_positive_int, default=10, help="fleet size (default 10)")
    sim.add_argument("--duration", type=_positive, default=60.0, help="seconds (default 60)")
    sim.add_argument("--scenario", default="steady",
                     choices=["steady", "lossy-broker", "offline", "duplicates",
                              "clock-skew", "broker-restart", "artefacts", "shared-scale"],
                     help="device behaviour (default steady)")

    bridge = sub.add_parser("bridge", help="run bridge workers against the configured broker "
                            "and DB, on the shared subscription, under a supervisor")
    bridge.add_argument("--workers", type=_positive_int, default=None,
                        help="worker processes (default: one per core); 1 runs the worker in "
                        "this process, without a supervisor")
    bridge.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    sub.add_parser("api", help="run the HTTPS API against the configured database")
    sub.add_parser("record-feed", help="run the medical-record feed (FHIR outbox sender)")

    maint = sub.add_parser("maintenance",
                           help="storage upkeep: partitions, rollups, compaction, retention")
    maint.add_argument("--once", action="store_true", help="one pass, then exit")
    maint.add_argument("--metrics-host", default=None,
                       help="default: HEALTHIOT_MAINTENANCE_METRICS_HOST")
    maint.add_argument("--metrics-port", type=int, default=None,
                       help="/metrics (passes, retention runs and rows removed, segments set "
                            "aside, failed steps, failed TimescaleDB jobs) in the Prometheus "
                            "text format; 0 turns it off (default: "
                            "HEALTHIOT_MAINTENANCE_METRICS_PORT)")
    keys = sub.add_parser("keys", help="key management")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    rotate = keys_sub.add_parser("rotate", help="re-wrap every data key with a new KEK")
    rotate.add_argument("--new-kek", type=Path, required=True,
                        help="file with the new 32-byte key-encryption key")

    audit = sub.add_parser("audit", help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    audit_sub.add_parser("verify", help="check the hash chain; exit 1 at the first edited row")

    clin = sub.add_parser("clinicians", help="clinician accounts (password + TOTP)")
    clin_sub = clin.add_subparsers(dest="clinicians_command", required=True, metavar="ACTION")
    add = clin_sub.add_parser("add", help="create an account; prints its one-time secrets")
    add.add_argument("--rpps", required=True, help="11-digit RPPS number (checked)")
    add.add_argument("--profession", required=True,
                     help="physician, pharmacist, midwife, nurse, dentist, physiotherapist")
    add.add_argument("--name", required=True, help="display name shown to patients")
    add.add_argument("--username", required=True)

    ops = sub.add_parser("operators", help="operator accounts (password + TOTP): they read "
                         "refusals through the API")
    ops_sub = ops.add_subparsers(dest="operators_command", required=True, metavar="ACTION")
    op_add = ops_sub.add_parser("add", help="create an account; prints its one-time secrets")
    op_add.add_argument("--username", required=True)
    op_add.add_argument("--name", required=True, help="display name, in the audit log")
    op_add.add_argument("--role", required=True, choices=["operator", "operator-values"],
                        help="operator: refusals without payloads; operator-values: may also "
                        "open payloads, which can hold health values")

    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("migrate", help="apply pending schema migrations (safe to repeat)")

    ca = sub.add_parser("ca", help="the development certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    ca_init = ca_sub.add_parser(
        "init", help="create the root and device CA under var/pki (idempotent)")
    ca_init.add_argument("--offline-root", type=Path, metavar="DIR",
                         help="write the root key to DIR, to be kept offline, not to var/pki")

    dev = sub.add_parser("devices", help="device registry: factory provisioning, revocation")
    dev_sub = dev.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    prov = dev_sub.add_parser(
        "provision", help="issue a certificate from the CSR the device made (its key never "
        "leaves it) and register it with a pairing code")
    prov.add_argument("--model", required=True, choices=MODELS)
    prov.add_argument("--serial", required=True)
    prov.add_argument("--out", type=Path, required=True,
                      help="directory the device loads: device.pem, ca.pem, enrolment.json")
    prov.add_argument("--csr", type=Path, default=None,
                      help="the device's CSR, CN = its device id (default: OUT/device.csr)")
    prov.add_argument("--firmware", default=None, help="firmware version at the factory")
    revoke = dev_sub.add_parser("revoke", help="revoke a device: registry, CRL, broker reload")
    revoke.add_argument("device_id")
    revoke.add_argument("--revoker-cert", type=Path, default=None,
                        help="service certificate (CN svc-revoker) that takes over the live "
                        "session (default: PKI/services/revoker.pem)")
    revoke.add_argument("--revoker-key", type=Path, default=None)
    crl = dev_sub.add_parser("crl", help="re-sign the CRL from the registry (do it monthly)")
    watch = dev_sub.add_parser(
        "watch-takeovers", help="follow the broker's log: record, count and log every "
        "connection under another device's client id")
    watch.add_argument("--log-file", type=Path, default=None,
                       help="the broker's log, with connection messages (default: the "
                       "embedded broker's)")
    watch.add_argument("--metrics-host", default="127.0.0.1")
    watch.add_argument("--metrics-port", type=int, default=9109,
                       help="/metrics in the Prometheus text format; 0 turns it off")
    renewer = dev_sub.add_parser(
        "renewer", help="answer devices' certificate renewal CSRs over MQTT (holds the "
        "device CA)")
    renewer.add_argument("--cert", type=Path, default=None,
                         help="service certificate, CN svc-renewer (default: "
                         "PKI/services/renewer.pem)")
    renewer.add_argument("--key", type=Path, default=None)
    quarantine = dev_sub.add_parser(
        "quarantine", help="list what devices sent that was quarantined, newest first: "
        "time, device, reason, detail (payloads stay sealed)")
    quarantine.add_argument("--reason", default=None,
                            help="only this reason (sequence_reused, malformed, ...)")
    quarantine.add_argument("--device", default=None, help="only this device id")
    quarantine.add_argument("--limit", type=_positive_int, default=100)
    for p in (prov, revoke, crl, renewer):
        p.add_argument("--pki", type=Path, default=None,
                       help="directory of the device CA (default: var/pki)")
    for p in (revoke, crl):
        p.add_argument("--crl-file", type=Path, default=None,
                       help="the broker's crlfile (default: the embedded broker's)")

    quar = sub.add_parser("quarantine", help="what the bridge refused, per device and reason "
                          "(payloads stay sealed)")
    quar_sub = quar.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    qlist = quar_sub.add_parser("list", help="records, newest first: id, time, device, reason, "
                                "detail")
    qlist.add_argument("--device", default=None, help="only this device id")
    qlist.add_argument("--reason", default=None, help="only this reason (asyncapi.yaml)")
    qlist.add_argument("--hours", type=_non_negative, default=None,
                       help="only those received in the last HOURS")
    qlist.add_argument("--limit", type=_positive_int, default=100)
    qshow = quar_sub.add_parser("show", help="one record's metadata")
    qshow.add_argument("record_id", type=_positive_int, metavar="ID")
    qpurge = quar_sub.add_parser("purge", help="delete records older than --older-than-days "
                                 "(maintenance does it after the retention period)")
    qpurge.add_argument("--older-than-days", type=_non_negative, required=True)
    qpurge.add_argument("--device", default=None, help="only this device id")
    qpurge.add_argument("--reason", default=None, help="only this reason")

    broker = sub.add_parser("broker-config",
                            help="write mosquitto.conf and the policy plugin for a deployment")
    broker.add_argument("--out", type=Path, required=True, help="directory to write to")
    broker.add_argument("--certs", type=Path, required=True,
                        help="directory holding clients-ca.pem, broker.pem, broker.key "
                        "and, once devices are revoked, device-ca.crl")
    broker.add_argument("--port", type=int, default=8883, help="the devices' listener")
    broker.add_argument("--services-port", type=int, default=8884,
                        help="the services' listener (bridge, renewer, revoker): publish "
                        "it to no network devices reach")
    broker.add_argument("--plugin", type=Path, default=None,
                        help="the policy plugin as the broker sees it (default: build it "
                        "into --out)")
    broker.add_argument("--log-file", type=Path, default=None,
                        help="also log to this file (connection messages included), for "
                        "`healthiot devices watch-takeovers`")
    broker.add_argument("--bind", default="0.0.0.0")  # noqa: S104 (inside a container)

    record = sub.add_parser("record", help="the medical-record feed's device facts")
    record_sub = record.add_subparsers(dest="record_command", required=True, metavar="ACTION")
    sysid = record_sub.add_parser(
        "system-id", help="record a device's PHD system id (EUI-64 from its label), which "
        "the record requires of every device")
    sysid.add_argument("device_id")
    sysid.add_argument("eui64", help="eight hex bytes joined by dashes, e.g. "
                       "00-1B-C5-FF-FE-00-00-2A")

    code = sub.add_parser("totp", help="print a demo patient's current one-time code "
                          "(development only)")
    code.add_argument("username")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load()
        logs.configure(settings.log_level, settings.log_format)
        return _dispatch(args, settings)
    except HealthiotError as exc:
        print(f"healthiot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "run":
        from healthiot.run import run
        return asyncio.run(run(settings, args.duration))
    if args.command == "simulate":
        from healthiot.simulate import simulate
        return asyncio.run(simulate(settings, devices=args.devices, duration=args.duration,
                                    scenario=args.scenario))
    if args.command == "bridge":
        from healthiot.daemons import run_bridge
        from healthiot.workers import default_workers, supervise
        if args.worker is not None:  # one of a supervisor's workers
            return asyncio.run(run_bridge(settings, worker=args.worker))
        workers = args.workers or settings.bridge_workers or default_workers()
        if workers == 1:
            return asyncio.run(run_bridge(settings))
        return asyncio.run(supervise(workers))
    if args.command == "api":
        from healthiot.daemons import run_api
        return asyncio.run(run_api(settings))
    if args.command == "record-feed":
        from healthiot.daemons import run_record_feed
        return asyncio.run(run_record_feed(settings))
    if args.command == "record":
        from healthiot.daemons import set_record_system_id
        return asyncio.run(set_record_system_id(settings, args.device_id, args.eui64))
    if args.command == "clinicians":
        from healthiot.daemons import add_clinician
        return asyncio.run(add_clinician(settings, rpps=args.rpps, profession=args.profession,
                                         name=args.name, username=args.username))
    if args.command == "operators":
        from healthiot.daemons import add_operator
        return asyncio.run(add_operator(settings, username=args.username, name=args.name,
                                        role=args.role))
    if args.command == "maintenance":
        from healthiot.daemons import run_maintenance
        return asyncio.run(run_maintenance(settings, once=args.once,
                                           metrics_host=args.metrics_host,
                                           metrics_port=args.metrics_port))
    if args.command == "keys":
        from healthiot.daemons import rotate_kek
        return asyncio.run(rotate_kek(settings, args.new_kek))
    if args.command == "audit":
        from healthiot.daemons import verify_audit
        return asyncio.run(verify_audit(settings))
    if args.command == "db":
        from healthiot.daemons import migrate_only
        return asyncio.run(migrate_only(settings))
    if args.command == "devices":
        return asyncio.run(_devices(args, settings))
    if args.command == "ca":
        from devices.ca import CertificateAuthority
        ca = CertificateAuthority.load_or_create(settings.var_dir / "pki",
                                                 offline_root=getattr(args, "offline_root", None))
        print(f"CA ready: trust {ca.ca_file}; client chain {ca.clients_ca_file}")
        if ca.root_key is None:
            print("the root key is not here: keep it offline; the online CA signs device "
                  "and service certificates and CRLs only")
        return 0
    if args.command == "broker-config":
        from devices.broker_config import BrokerFiles, ServicesListener, mosquitto_conf
        from devices.broker_plugin import build_plugin
        args.out.mkdir(parents=True, exist_ok=True)
        plugin = args.plugin
        if plugin is None:
            plugin = args.out / "healthiot_acl.so"
            shutil.copyfile(build_plugin(), plugin)
        files = BrokerFiles(args.certs / "clients-ca.pem", args.certs / "broker.pem",
                            args.certs / "broker.key", plugin, args.out / "data",
                            crl=args.certs / "device-ca.crl",  # named if it is there
                            log=args.log_file)
        files.persistence_dir.mkdir(exist_ok=True)
        (args.out / "mosquitto.conf").write_text(mosquitto_conf(
            files, bind=args.bind, port=args.port,
            services=ServicesListener(args.bind, args.services_port)))
        return 0
    if args.command == "quarantine":
        return asyncio.run(_quarantine(args, settings))
    if args.command == "totp":
        return _print_totp(settings, args.username)
    raise AssertionError(args.command)


async def _devices(args: argparse.Namespace, settings: Settings) -> int:
    from healthiot import device_admin
    if args.devices_command == "provision":
        return await device_admin.provision_device(
            settings, model=args.model, serial=args.serial, out=args.out, csr=args.csr,
            pki=args.pki, firmware=args.firmware)
    if args.devices_command == "revoke":
        return await device_admin.revoke_device(
            settings, args.device_id, pki=args.pki, crl_file=args.crl_file,
            revoker_cert=args.revoker_cert, revoker_key=args.revoker_key)
    if args.devices_command == "renewer":
        return await device_admin.run_renewer(settings, pki=args.pki, cert=args.cert,
                                              key=args.key)
    if args.devices_command == "quarantine":
        return await device_admin.list_quarantine(settings, reason=args.reason,
                                                  device_id=args.device, limit=args.limit)
    if args.devices_command == "watch-takeovers":
        return await device_admin.run_takeover_watch(
            settings, args.log_file or settings.var_dir / "log" / "mosquitto.log",
            metrics_host=args.metrics_host, metrics_port=args.metrics_port)
    return await device_admin.publish_crl(settings, pki=args.pki, crl_file=args.crl_file)


async def _quarantine(args: argparse.Namespace, settings: Settings) -> int:
    from healthiot import device_admin
    if args.quarantine_command == "list":
        return await device_admin.list_quarantine(settings, reason=args.reason,
                                                  device_id=args.device, limit=args.limit,
                                                  hours=args.hours)
    if args.quarantine_command == "show":
        return await device_admin.show_quarantined(settings, args.record_id)
    return await device_admin.purge_quarantine(settings, older_than_days=args.older_than_days,
                                               device_id=args.device, reason=args.reason)


def _print_totp(settings: Settings, username: str) -> int:
    from api.totp import now_code, secret_from_base32
    if settings.environment != "development":
        print("healthiot: totp is a development helper", file=sys.stderr)
        return 2
    path = settings.var_dir / "demo" / "credentials.json"
    try:
        secret = json.loads(path.read_text())[username]["totp_secret"]
    except (OSError, KeyError, ValueError):
        print(f"healthiot: no demo account {username!r} in {path}", file=sys.stderr)
        return 2
    print(now_code(secret_from_base32(secret)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
