"""Certificates and SuperNode keys (fedal/deploy/certs.py), checked with real TLS and Flower's loaders."""

import argparse
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedal.deploy.certs import CertError, generate, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("certs"), ["superlink.example.org", "10.1.2.3"], n_supernodes=2)


def load_cert(p):
    return x509.load_pem_x509_certificate(Path(p).read_bytes())


def test_superlink_certificate_is_signed_by_the_ca_with_the_hosts_as_sans(bundle):
    ca, cert = load_cert(bundle.ca_cert), load_cert(bundle.superlink_cert)
    cert.verify_directly_issued_by(ca)  # raises if the signature or issuer does not match
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"superlink.example.org", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("10.1.2.3"),
                                                            ipaddress.ip_address("127.0.0.1")}
    other_ca = load_cert(generate(bundle.out / "other", ["x.example"]).ca_cert)
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(other_ca)


def test_tls_handshake_on_loopback_verifies_against_the_ca(bundle):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(bundle.superlink_cert, bundle.superlink_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(n):
        for _ in range(n):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, args=(3,), daemon=True)
    t.start()
    client_ctx = ssl.create_default_context(cafile=str(bundle.ca_cert))
    for name in ("127.0.0.1", "localhost"):  # an IP SAN and a DNS SAN, as a SuperNode checks them
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=name) as s:
                assert s.recv(2) == b"ok"
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|doesn't match"):
            client_ctx.wrap_socket(raw, server_hostname="elsewhere.example.org")
    t.join(5)
    listener.close()


def test_supernode_keys_load_with_flowers_own_loaders(bundle):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    assert len(bundle.supernode_keys) == 2
    for priv_path, pub_path in bundle.supernode_keys:
        assert priv_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        assert pub_path.read_text().startswith("ecdsa-sha2-nistp384 ")
        priv = serialization.load_ssh_private_key(priv_path.read_bytes(), None)
        pub = serialization.load_ssh_public_key(pub_path.read_bytes())
        assert isinstance(priv.curve, ec.SECP384R1)
        assert priv.public_key().public_numbers() == pub.public_numbers()
        assert try_load_public_key(pub_path)  # what `flwr supernode register` runs
        args = argparse.Namespace(auth_supernode_private_key=str(priv_path), auth_supernode_public_key=None)
        key, public = _try_setup_client_authentication(args)  # what `flower-supernode` runs
        assert public.public_numbers() == pub.public_numbers()
    a, b = (p.read_bytes() for p, _ in bundle.supernode_keys)
    assert a != b


def test_private_keys_are_0600_and_the_rest_0644(bundle):
    privates = [bundle.ca_key, bundle.superlink_key, *(p for p, _ in bundle.supernode_keys)]
    publics = [bundle.ca_cert, bundle.superlink_cert, *(q for _, q in bundle.supernode_keys)]
    for p in privates:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    for p in publics:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p
    serialization.load_pem_private_key(bundle.superlink_key.read_bytes(), None)
    serialization.load_pem_private_key(bundle.ca_key.read_bytes(), None)
    assert sorted(p.name for p in bundle.out.iterdir() if p.is_file()) == sorted(
        p.name for p in privates + publics)  # no temporary files left behind


def test_existing_files_are_never_overwritten_without_force(tmp_path):
    first = generate(tmp_path, ["127.0.0.1"], n_supernodes=1)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CertError, match=r"refusing to overwrite 6 existing file\(s\): .*ca.crt.*pass --force"):
        generate(tmp_path, ["127.0.0.1"], n_supernodes=3)  # supernode-2/3 would be new: still nothing written
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before
    generate(tmp_path, ["127.0.0.1"], n_supernodes=1, force=True)
    assert first.ca_cert.read_bytes() != before[first.ca_cert]


@pytest.mark.parametrize("host", ["https://superlink.example.org", "superlink:9092", "two words", ""])
def test_bad_hosts_are_named(tmp_path, host):
    with pytest.raises(CertError, match="is not a host name or an IP address"):
        generate(tmp_path, [host])
    assert not any(tmp_path.iterdir())


def test_the_command_line(tmp_path, capsys):
    out = tmp_path / "certs"
    r = subprocess.run([sys.executable, "-m", "fedal.deploy.certs", "--out", str(out), "--hosts", "127.0.0.1",
                        "localhost", "--supernodes", "2"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "supernode-2.key" in r.stdout and "valid for 127.0.0.1, localhost" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "superlink.crt", "superlink.key",
                                                      "supernode-1.key", "supernode-1.pub",
                                                      "supernode-2.key", "supernode-2.pub"]
    assert main(["--out", str(out), "--hosts", "127.0.0.1"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["--out", str(out), "--hosts", "127.0.0.1", "--force"]) == 0
