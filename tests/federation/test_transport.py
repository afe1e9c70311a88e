"""TLS when given a certificate, and no plain HTTP on a network address by default."""

import datetime
import ipaddress
import subprocess
import sys

import httpx
import pytest
from conftest import SECRET, experiment, write_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(folder):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedge test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_server_speaks_tls_with_a_certificate(federation, tmp_path):
    cert, key = self_signed(tmp_path)
    server = federation(experiment(name="tls"), "--tls-cert", str(cert), "--tls-key", str(key))
    assert server.url.startswith("https://")
    enrolled = httpx.post(f"{server.url}/v1/devices", json={"secret": SECRET}, verify=server.verify)
    assert enrolled.status_code == 201
    with pytest.raises(httpx.HTTPError):  # an unknown certificate is not trusted
        httpx.post(f"{server.url}/v1/devices", json={"secret": SECRET})
    with pytest.raises(httpx.HTTPError):  # and there is no plain HTTP on that port
        httpx.get(server.url.replace("https://", "http://") + "/v1/health")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "refusing plain HTTP on 0.0.0.0"),
        (["--tls-cert", "missing.pem"], "give both --tls-cert and --tls-key"),
        (["--tls-cert", "a.pem", "--tls-key", "b.pem"], "TLS file not found: a.pem"),
    ],
)
def test_unsafe_or_broken_transport_is_refused(tmp_path, args, message):
    config = write_config(tmp_path / "c.toml", experiment())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedge",
            "server",
            str(config),
            "--state",
            str(tmp_path / "s"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_a_second_server_on_the_same_state_is_refused(federation, tmp_path):
    first = federation(experiment(name="single"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedge",
            "server",
            str(first.config),
            "--port",
            "0",
            "--state",
            str(first.state),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"in use by another fedge server (pid {first.proc.pid})" in result.stderr
    assert first.status()["round"]["number"] == 1  # the first one carries on
