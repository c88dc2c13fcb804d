"""Throwaway certificates for the TLS tests, made at test time with ``cryptography``."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    client: bool = False,
    names: tuple[x509.GeneralName, ...] = (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(names)),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server and a client certificate it signed, a self-signed
    server certificate no CA vouches for, and one the CA signed for another host."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    self_signed_cert: str
    self_signed_key: str
    #: signed by the CA, but for another host (elsewhere.example) only
    wrong_name_cert: str
    wrong_name_key: str


def make_certificates(directory: Path) -> Certificates:
    """Write the certificates of :class:`Certificates` in ``directory``."""
    ca_key = _key()
    ca = _certificate("rmqtwist test CA", ca_key, None, ca=True)
    _write(directory / "ca", ca, None)
    issuer = (ca.subject, ca_key)
    for name, client in (("server", False), ("client", True)):
        key = _key()
        _write(directory / name, _certificate(f"rmqtwist {name}", key, issuer, client=client), key)
    key = _key()
    _write(directory / "self-signed", _certificate("localhost", key, None), key)
    key = _key()
    elsewhere = (x509.DNSName("elsewhere.example"),)
    _write(directory / "wrong-name", _certificate("elsewhere", key, issuer, names=elsewhere), key)
    return Certificates(
        ca=str(directory / "ca.pem"),
        server_cert=str(directory / "server.pem"),
        server_key=str(directory / "server.key"),
        client_cert=str(directory / "client.pem"),
        client_key=str(directory / "client.key"),
        self_signed_cert=str(directory / "self-signed.pem"),
        self_signed_key=str(directory / "self-signed.key"),
        wrong_name_cert=str(directory / "wrong-name.pem"),
        wrong_name_key=str(directory / "wrong-name.key"),
    )
