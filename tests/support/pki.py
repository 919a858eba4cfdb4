"""A throwaway PKI for tests: CA, server certificate, per-device client certificates.

Everything is written as PEM files into one directory; paths come back in dataclasses so a
test can hand them to Mosquitto (``cafile``/``certfile``/``keyfile``) or to paho's ``tls_set``.

Keys are ECDSA P-256 (fast to make, accepted by Mosquitto/OpenSSL). Validity is wide
(2020 .. now + 20 years) so tests that move the clock with faketime still see valid
certificates; pass ``not_before``/``not_after`` to :meth:`Pki.issue_client` for expired ones.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def _far_future() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=365 * 20)


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its private key on disk (PEM)."""

    cn: str
    cert: Path
    key: Path


@dataclass
class _Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    files: CertFiles


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)


def _make_ca(directory: Path, name: str, cn: str) -> _Authority:
    key = _new_key()
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-agent tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_EPOCH)
        .not_valid_after(_far_future())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.crt"
    _write(path, cert, key)
    return _Authority(name, key, cert, CertFiles(cn, path, path.with_suffix(".key")))


def _issue(
    ca: _Authority,
    directory: Path,
    name: str,
    cn: str,
    *,
    server: bool,
    sans: list[x509.GeneralName] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> CertFiles:
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-agent tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _EPOCH)
        .not_valid_after(not_after or _far_future())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    path = directory / f"{name}.crt"
    _write(path, cert, key)
    return CertFiles(cn, path, path.with_suffix(".key"))


def _safe(cn: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in cn)


@dataclass
class Pki:
    """Paths of a test PKI. ``clients`` maps CN -> files; ``rogue`` is signed by another CA."""

    dir: Path
    ca: CertFiles
    server: CertFiles
    clients: dict[str, CertFiles]
    rogue_ca: CertFiles
    rogue: CertFiles
    _ca: _Authority = field(repr=False)
    _rogue_ca: _Authority = field(repr=False)

    @property
    def ca_cert(self) -> Path:
        return self.ca.cert

    def client(self, cn: str) -> CertFiles:
        """The client certificate for ``cn``, issued by the good CA on first use."""
        if cn not in self.clients:
            self.clients[cn] = self.issue_client(cn)
        return self.clients[cn]

    def crl(self, path: Path, revoked: "list[CertFiles]" = ()) -> Path:
        """Write to ``path`` a certificate revocation list of the good CA (PEM; Mosquitto's
        ``crlfile``) revoking ``revoked``; an empty list is a valid CRL revoking nothing."""
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self._ca.cert.subject)
                   .last_update(now - dt.timedelta(minutes=5)).next_update(_far_future()))
        for files in revoked:
            serial = x509.load_pem_x509_certificate(Path(files.cert).read_bytes()).serial_number
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - dt.timedelta(minutes=1))
                .build())
        Path(path).write_bytes(builder.sign(self._ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return Path(path)

    def issue_client(
        self,
        cn: str,
        *,
        name: str | None = None,
        rogue: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> CertFiles:
        """Issue a new client certificate (not cached). ``rogue=True`` signs it with the other CA."""
        ca = self._rogue_ca if rogue else self._ca
        return _issue(
            ca, self.dir, name or f"client-{_safe(cn)}", cn, server=False,
            not_before=not_before, not_after=not_after,
        )


def make_pki(
    directory: str | Path,
    clients: list[str] | tuple[str, ...] = ("device-001",),
    *,
    server_cn: str = "localhost",
    server_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1"),
) -> Pki:
    """Create CA, server cert (SAN IP + DNS), one client cert per CN and a rogue client cert."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "ca", "edge-agent test CA")
    sans: list[x509.GeneralName] = []
    for host in server_hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server = _issue(ca, directory, "server", server_cn, server=True, sans=sans)
    issued = {cn: _issue(ca, directory, f"client-{_safe(cn)}", cn, server=False) for cn in clients}
    rogue_ca = _make_ca(directory, "rogue-ca", "rogue CA")
    rogue = _issue(rogue_ca, directory, "rogue-client", clients[0] if clients else "rogue", server=False)
    return Pki(
        dir=directory, ca=ca.files, server=server, clients=issued,
        rogue_ca=rogue_ca.files, rogue=rogue, _ca=ca, _rogue_ca=rogue_ca,
    )
