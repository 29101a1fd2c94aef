"""One command for every key and certificate a fedal deployment on Flower 1.41 needs.

    fedal certs init --out /srv/fedal/certs --hosts superlink.example.org 10.0.0.5 --supernodes 3
    fedal certs add --out /srv/fedal/certs            # a site joins later: one more SuperNode key

(``python -m fedal.deploy.certs [init|add] ...`` is the same; without a subcommand it is
``init``.) ``init`` writes into ``certs/``:

- ``ca.crt`` / ``ca.key``: a private certificate authority. ``ca.crt`` goes to every SuperNode
  (``flower-supernode --root-certificates``) and to the SuperLink (``--ssl-ca-certfile``) and the
  ``flwr`` CLI (``root-certificates`` in the connection); keep ``ca.key`` off the servers.
- ``superlink.crt`` / ``superlink.key``: the SuperLink's TLS certificate, signed by the CA, valid
  for every given host name and IP address (plus ``localhost`` and ``127.0.0.1``: with
  ``--host 0.0.0.0`` the SuperLink's own ServerApp runner, ``flower-superexec``, connects to
  itself through 127.0.0.1 and checks the certificate like any client).
- ``supernode-<k>.key`` / ``supernode-<k>.pub`` for k = 1..N: SuperNode authentication key
  pairs on the NIST P-384 curve. Flower 1.41 reads the private key with
  ``load_ssh_private_key`` (``flower-supernode --auth-supernode-private-key``) and the public key
  with ``load_ssh_public_key`` and rejects non-NIST curves (``flwr supernode register``), so
  both are written in OpenSSH format (``-----BEGIN OPENSSH PRIVATE KEY-----`` and
  ``ecdsa-sha2-nistp384 AAAA...``).

Private keys are created with mode 0600. Existing files are never overwritten unless
``--force`` is given; the command checks every target first and writes nothing if any exists.

``add`` writes one more SuperNode key pair, ``supernode-<k>.key``/``.pub`` with the next free
number k (or ``--name NAME``: ``supernode-NAME.*``), and touches nothing else: SuperNode keys are
independent of the CA and the SuperLink's certificate, so the federation's other keys stay
valid. The operator registers the new public key (``flwr supernode register``), which the
SuperLink accepts while it runs.

Everything is made with the ``cryptography`` package, which Flower itself depends on, so no
``openssl`` or ``ssh-keygen`` binary (and no version-specific command-line syntax) is needed on
the machine that prepares a deployment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedal.atomic import atomic_file

CURVE = ec.SECP384R1  # NIST P-384: accepted by Flower's SuperNode authentication and by TLS
HASH = hashes.SHA384
LOOPBACK = ("localhost", "127.0.0.1")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


class CertError(ValueError):
    """The certificates cannot be made as asked (bad host, existing files)."""


@dataclass(frozen=True)
class Bundle:
    out: Path
    ca_cert: Path
    ca_key: Path
    superlink_cert: Path
    superlink_key: Path
    supernode_keys: tuple[tuple[Path, Path], ...]  # (private, public) per SuperNode
    hosts: tuple[str, ...]  # the SANs of the SuperLink certificate


def parse_host(host: str) -> x509.GeneralName:
    """A SAN entry for ``host``: an IP address or a DNS name (no scheme, no port)."""
    h = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(h.strip("[]")))
    except ValueError:
        pass
    if not _HOSTNAME.match(h):
        raise CertError(f"host {host!r} is not a host name or an IP address; give e.g. "
                        "superlink.example.org or 10.0.0.5 (no scheme, no port)")
    return x509.DNSName(h.rstrip(".").lower())


def paths(out: str | Path, n_supernodes: int) -> dict[str, Path]:
    out = Path(out)
    files = {"ca_cert": out / "ca.crt", "ca_key": out / "ca.key",
             "superlink_cert": out / "superlink.crt", "superlink_key": out / "superlink.key"}
    for k in range(1, n_supernodes + 1):
        files[f"supernode-{k}.key"] = out / f"supernode-{k}.key"
        files[f"supernode-{k}.pub"] = out / f"supernode-{k}.pub"
    return files


def generate(out: str | Path, hosts: list[str], n_supernodes: int = 0, *, days: int = 365,
             force: bool = False) -> Bundle:
    """Create the CA, the SuperLink certificate and ``n_supernodes`` SuperNode key pairs."""
    if not hosts:
        raise CertError("give at least one host name or IP address of the SuperLink (--hosts)")
    if n_supernodes < 0:
        raise CertError(f"--supernodes = {n_supernodes} must be >= 0")
    if days < 1:
        raise CertError(f"--days = {days} must be >= 1")
    sans: list[x509.GeneralName] = []
    for h in [*hosts, *LOOPBACK]:
        name = parse_host(h)
        if name not in sans:
            sans.append(name)
    out = Path(out)
    files = paths(out, n_supernodes)
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not force:
        raise CertError(f"refusing to overwrite {len(existing)} existing file(s): {', '.join(existing)}; "
                        "pass --force to replace them (SuperNodes registered with the old keys must then "
                        "be registered again), or choose another --out")
    out.mkdir(parents=True, exist_ok=True)

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    # backdate a little: a machine whose clock runs behind would otherwise reject a fresh cert
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedal deployment CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, HASH())
    )

    server_key = ec.generate_private_key(CURVE())
    first = sans[0].value
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, HASH())
    )

    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    _write(files["ca_cert"], ca_cert.public_bytes(pem), private=False)
    _write(files["ca_key"], ca_key.private_bytes(pem, pkcs8, plain), private=True)
    _write(files["superlink_cert"], server_cert.public_bytes(pem), private=False)
    _write(files["superlink_key"], server_key.private_bytes(pem, pkcs8, plain), private=True)
    pairs = [_supernode_key(files[f"supernode-{k}.key"], files[f"supernode-{k}.pub"], f"supernode-{k}")
             for k in range(1, n_supernodes + 1)]
    return Bundle(out, files["ca_cert"], files["ca_key"], files["superlink_cert"], files["superlink_key"],
                  tuple(pairs), tuple(str(s.value) for s in sans))


def _supernode_key(priv_path: Path, pub_path: Path, comment: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair in OpenSSH format (module docstring)."""
    key = ec.generate_private_key(CURVE())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH) + f" {comment}\n".encode()
    _write(priv_path, priv, private=True)
    _write(pub_path, pub, private=False)
    return priv_path, pub_path


_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def add_supernode(out: str | Path, name: str | None = None) -> tuple[Path, Path]:
    """One more SuperNode key pair in an existing certificate folder: ``supernode-<name>.key`` and
    ``.pub``, ``name`` by default the next number after the folder's keys. Refuses a folder
    without ``ca.crt`` (not a certificate folder: a typo) and an existing key."""
    out = Path(out)
    if not (out / "ca.crt").exists():
        raise CertError(f"{out} holds no ca.crt: give the folder 'fedal certs init' wrote (--out), or run "
                        "'fedal certs init' first")
    if name is None:
        taken = [int(m.group(1)) for p in out.glob("supernode-*.pub")
                 if (m := re.fullmatch(r"supernode-(\d+)\.pub", p.name))]
        name = str(max(taken, default=0) + 1)
    elif not _KEY_NAME.match(name):
        raise CertError(f"--name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-'")
    priv, pub = out / f"supernode-{name}.key", out / f"supernode-{name}.pub"
    existing = [str(p) for p in (priv, pub) if p.exists()]
    if existing:
        raise CertError(f"refusing to overwrite {', '.join(existing)} (a registered SuperNode may use it); "
                        "choose another --name")
    return _supernode_key(priv, pub, f"supernode-{name}")


def _write(path: Path, data: bytes, *, private: bool) -> None:
    with atomic_file(path, mode=0o600 if private else 0o644) as f:
        f.write(data)


def main(argv: list[str] | None = None, prog: str = "python -m fedal.deploy.certs") -> int:
    """``init`` (also without a subcommand, as before) or ``add``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "add":
        return main_add(argv[1:], f"{prog} add")
    if argv and argv[0] == "init":
        return main_init(argv[1:], f"{prog} init")
    return main_init(argv, prog)


def main_init(argv: list[str] | None = None, prog: str = "fedal certs init") -> int:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Create a CA, the SuperLink's TLS certificate and SuperNode authentication keys "
                    "for a Flower 1.41 deployment of fedal.")
    ap.add_argument("--out", required=True, help="folder to write into (created if absent)")
    ap.add_argument("--hosts", nargs="+", required=True,
                    help="host names and IP addresses SuperNodes and the flwr CLI use to reach the SuperLink")
    ap.add_argument("--supernodes", type=int, default=0, help="number of SuperNode key pairs (default 0)")
    ap.add_argument("--days", type=int, default=365, help="validity of the certificates in days (default 365)")
    ap.add_argument("--force", action="store_true", help="replace existing files")
    args = ap.parse_args(argv)
    try:
        b = generate(args.out, args.hosts, args.supernodes, days=args.days, force=args.force)
    except CertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"CA certificate:          {b.ca_cert}\n"
          f"CA key (keep offline):   {b.ca_key}\n"
          f"SuperLink certificate:   {b.superlink_cert}  (valid for {', '.join(b.hosts)})\n"
          f"SuperLink key:           {b.superlink_key}")
    for priv, pub in b.supernode_keys:
        print(f"SuperNode key pair:      {priv}  {pub}")
    return 0


def main_add(argv: list[str] | None = None, prog: str = "fedal certs add") -> int:
    ap = argparse.ArgumentParser(
        prog=prog, description="Add one SuperNode key pair to a certificate folder (a site that joins later); "
                               "nothing else in the folder changes.")
    ap.add_argument("--out", required=True, help="the folder 'fedal certs init' wrote")
    ap.add_argument("--name", default=None, help="the key's name: supernode-NAME.key/.pub (default: the next number)")
    args = ap.parse_args(argv)
    try:
        priv, pub = add_supernode(args.out, args.name)
    except CertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"SuperNode key pair:      {priv}  {pub}\n"
          f"register it:             flwr supernode register {pub} <connection> --name <site name>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
