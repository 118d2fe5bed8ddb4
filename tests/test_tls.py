"""`popseg run --scheduler tls://...` against a real TLS scheduler and worker on loopback, with
certificates made by the test: the right certificates connect, none or foreign ones are refused
in one line."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import numpy as np
import pytest

from conftest import read_labels, start_loopback_cluster, stop_processes

from popseg_dask.cli import main



def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert, key) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization

    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return str(path.with_suffix(".pem")), str(path.with_suffix(".key"))


def _cert(name: str, key, issuer_name, issuer_key, ca: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer_key or key, hashes.SHA256()), subject


def make_pki(folder: Path, names=("scheduler", "worker", "client")) -> dict[str, tuple[str, str]]:
    """A CA and certificates it signs: {"ca": (pem, key), name: (pem, key), ...}."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert, ca_name = _cert("popseg-test-ca", ca_key, None, None, ca=True)
    out = {"ca": _write(folder / "ca", ca_cert, ca_key)}
    for n in names:
        k = _key()
        c, _ = _cert(n, k, ca_name, ca_key, ca=False)
        out[n] = _write(folder / n, c, k)
    return out


@pytest.fixture
def tls_cluster(tmp_path):
    from distributed.security import Security

    pki = make_pki(tmp_path / "pki")
    tls = lambda who: ["--tls-ca-file", pki["ca"][0], "--tls-cert", pki[who][0], "--tls-key", pki[who][1]]  # noqa
    sec = Security(tls_ca_file=pki["ca"][0], tls_client_cert=pki["client"][0], tls_client_key=pki["client"][1],
                   require_encryption=True)
    addr, procs = start_loopback_cluster(tmp_path, [tls("worker")], protocol="tls", scheduler_args=tls("scheduler"),
                                         security=sec)
    yield addr, pki
    stop_processes(procs)


def test_tls_run_with_certificates_matches_local(demo_dir, tls_cluster, tmp_path, capsys):
    addr, pki = tls_cluster
    creds = ["--tls-ca-file", pki["ca"][0], "--tls-cert", pki["client"][0], "--tls-key", pki["client"][1]]
    assert main(["run", str(demo_dir / "run.yaml"), "--scheduler", addr, "--quiet", *creds]) == 0
    out = demo_dir / "movie.popseg.zarr"
    remote = read_labels(out, "targets")
    assert main(["run", str(demo_dir / "run.yaml"), "--workers", "1", "--quiet", "--overwrite"]) == 0
    assert np.array_equal(remote, read_labels(out, "targets"))


def test_tls_scheduler_refuses_clients_without_the_right_certificate(demo_dir, tls_cluster, tmp_path, capsys):
    addr, _ = tls_cluster
    out = demo_dir / "movie.popseg.zarr"
    assert main(["run", str(demo_dir / "run.yaml"), "--scheduler", addr, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "TLS scheduler: give --tls-ca-file" in err
    foreign = make_pki(tmp_path / "other", names=("client",))  # a CA the scheduler does not trust
    creds = ["--tls-ca-file", foreign["ca"][0], "--tls-cert", foreign["client"][0], "--tls-key", foreign["client"][1]]
    assert main(["run", str(demo_dir / "run.yaml"), "--scheduler", addr, "--quiet", *creds]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot reach the Dask scheduler" in err and "certificates" in err
    assert main(["run", str(demo_dir / "run.yaml"), "--scheduler", addr, "--quiet", "--tls-cert", "x.pem"]) == 2
    assert "TLS needs all three" in capsys.readouterr().err
    assert not out.exists()
