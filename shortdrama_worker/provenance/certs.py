"""Signing certificates for Content Credentials: loading, checking, and development ones.

A C2PA claim signer's certificate must follow the C2PA certificate profile: an
end-entity certificate (not a CA, not self-signed) issued by a CA, with the
digitalSignature key usage, an extended key usage of emailProtection,
documentSigning or C2PA claim signing (never anyExtendedKeyUsage), an
authority key identifier, a SHA-2 signature and an EC, RSA (≥ 2048 bits) or
Ed25519 key. Verifiers refuse anything else, so the daemon refuses it at
start-up, with the reason, rather than signing files nobody will accept.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

ANY_EKU = x509.ObjectIdentifier("2.5.29.37.0")
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
C2PA_CLAIM_SIGNING = x509.ObjectIdentifier("1.3.6.1.4.1.62558.2.1")
SIGNING_EKUS = {
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    DOCUMENT_SIGNING: "documentSigning",
    C2PA_CLAIM_SIGNING: "c2pa-kp-claimSigning",
}
ALLOWED_SIGNATURES = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    SignatureAlgorithmOID.RSA_WITH_SHA256,
    SignatureAlgorithmOID.RSA_WITH_SHA384,
    SignatureAlgorithmOID.RSA_WITH_SHA512,
    SignatureAlgorithmOID.RSASSA_PSS,
    SignatureAlgorithmOID.ED25519,
}
_CURVES = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
DEV_CERT_DAYS = 730
DEV_RENEW_BEFORE = datetime.timedelta(days=7)


_Ext = TypeVar("_Ext", bound=x509.ExtensionType)


class CertificateError(Exception):
    """The signing certificate or key cannot be used; the message says why."""


SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SigningCredentials:
    """A checked certificate chain (signing certificate first) and its private key."""

    chain: tuple[x509.Certificate, ...]
    key: SigningKey
    algorithm: str
    """The C2PA signing algorithm the key calls for: es256, es384, es512, ps256 or ed25519."""

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def describe(self) -> dict[str, str]:
        """Who signs, for a log line: names, expiry and fingerprint, never the key."""
        leaf = self.leaf
        return {
            "subject": leaf.subject.rfc4514_string(),
            "issuer": leaf.issuer.rfc4514_string(),
            "not_after": leaf.not_valid_after_utc.isoformat(),
            "sha256_fingerprint": leaf.fingerprint(hashes.SHA256()).hex(),
            "algorithm": self.algorithm,
        }


def load_credentials(
    certificate: Path, private_key: Path, *, now: datetime.datetime | None = None
) -> SigningCredentials:
    """Read a PEM chain and key and check them against the C2PA certificate profile."""
    chain = tuple(_read_chain(certificate))
    key = _read_key(private_key)
    credentials = SigningCredentials(chain, key, algorithm_for(key))
    check_credentials(credentials, now=now, where=str(certificate))
    return credentials


def _read_chain(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read the certificate {path}: {exc.strerror}") from None
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path} holds no PEM certificate") from None
    return chain


def _read_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read the private key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(
            f"{path} is an encrypted private key; give the daemon an unencrypted PKCS#8 "
            "key readable only by its user"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # The exception text could quote key material: it is not repeated.
        raise CertificateError(f"{path} holds no PEM private key this server can use") from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CertificateError(f"{path}: C2PA signs with EC, RSA or Ed25519 keys only")
    return key


def algorithm_for(key: SigningKey) -> str:
    """The C2PA algorithm for a key: ES256/384/512 by curve, PS256 for RSA, Ed25519."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = _CURVES.get(key.curve.name)
        if alg is None:
            raise CertificateError(f"EC curve {key.curve.name} is not one C2PA allows")
        return alg
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise CertificateError(f"an RSA key of {key.key_size} bits is too short (≥ 2048)")
        return "ps256"  # C2PA refuses PKCS#1 v1.5 signatures on claims
    return "ed25519"


def check_credentials(
    credentials: SigningCredentials, *, now: datetime.datetime | None = None, where: str = ""
) -> None:
    """Raise ``CertificateError`` naming the first rule the chain or key breaks."""
    now = now or datetime.datetime.now(datetime.UTC)
    prefix = f"{where}: " if where else ""
    leaf = credentials.leaf
    if _public_der(credentials.key.public_key()) != _public_der(leaf.public_key()):
        raise CertificateError(
            f"{prefix}the private key does not belong to the signing certificate "
            f"({leaf.subject.rfc4514_string()}); the certificate must come first in the file"
        )
    problems = leaf_profile_problems(leaf)
    if problems:
        raise CertificateError(
            f"{prefix}the signing certificate breaks the C2PA certificate profile: "
            + "; ".join(problems)
        )
    for index, cert in enumerate(credentials.chain):
        _check_validity(cert, now, prefix)
        if index + 1 < len(credentials.chain):
            _check_issued(cert, credentials.chain[index + 1], prefix)


def leaf_profile_problems(leaf: x509.Certificate) -> list[str]:
    """Every way a signing certificate departs from the C2PA profile (empty: none)."""
    problems: list[str] = []
    if leaf.version is not x509.Version.v3:
        problems.append("not an X.509 v3 certificate")
    if leaf.issuer == leaf.subject:
        problems.append("self-signed (it must be issued by a CA)")
    if leaf.signature_algorithm_oid not in ALLOWED_SIGNATURES:
        problems.append(f"signature algorithm {leaf.signature_algorithm_oid.dotted_string}")
    basic = _extension(leaf, x509.BasicConstraints)
    if basic is not None and basic.ca:
        problems.append("it is a CA certificate")
    usage = _extension(leaf, x509.KeyUsage)
    if usage is None or not usage.digital_signature:
        problems.append("no digitalSignature key usage")
    elif usage.key_cert_sign:
        problems.append("keyCertSign key usage")
    problems += _eku_problems(_extension(leaf, x509.ExtendedKeyUsage))
    if _extension(leaf, x509.AuthorityKeyIdentifier) is None:
        problems.append("no authority key identifier")
    return problems


def _eku_problems(eku: x509.ExtendedKeyUsage | None) -> list[str]:
    if eku is None:
        return ["no extended key usage (emailProtection or documentSigning)"]
    if ANY_EKU in eku:
        return ["anyExtendedKeyUsage"]
    if not any(oid in eku for oid in SIGNING_EKUS):
        return ["extended key usage has none of " + ", ".join(SIGNING_EKUS.values())]
    return []


def _check_validity(cert: x509.Certificate, now: datetime.datetime, prefix: str) -> None:
    name = cert.subject.rfc4514_string()
    if now >= cert.not_valid_after_utc:
        raise CertificateError(
            f"{prefix}certificate {name} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{prefix}certificate {name} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


def _check_issued(cert: x509.Certificate, issuer: x509.Certificate, prefix: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"{prefix}certificate {cert.subject.rfc4514_string()} is not issued by the next "
            f"one in the file ({issuer.subject.rfc4514_string()}); list the chain in order"
        ) from None
    basic = _extension(issuer, x509.BasicConstraints)
    if basic is None or not basic.ca:
        raise CertificateError(f"{prefix}{issuer.subject.rfc4514_string()} is not a CA")


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _public_der(key: object) -> bytes:
    assert hasattr(key, "public_bytes")
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


# -- development certificates -------------------------------------------------------------


@dataclass(frozen=True)
class DevCertificate:
    """The files of a development CA and signing certificate."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def chain(self) -> Path:
        return self.directory / "chain.pem"

    @property
    def key(self) -> Path:
        return self.directory / "signer.key"


def default_dev_dir() -> Path:
    """``$XDG_STATE_HOME/shortdrama-worker/dev-certificate`` (``~/.local/state/…``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "shortdrama-worker" / "dev-certificate"


def make_dev_certificate(
    directory: Path,
    *,
    now: datetime.datetime | None = None,
    days: int = DEV_CERT_DAYS,
    organization: str = "shortdrama-worker development",
) -> DevCertificate:
    """Write a development CA and a signing certificate issued by it into ``directory``.

    Both follow the C2PA certificate profile, so manifests signed with them
    validate; a verifier trusts them only when given ``ca.pem`` as a trust
    anchor. The CA's key is not kept: nothing else can be issued under it.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(minutes=5)  # clock skew between machines
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{organization} CA", organization)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=days + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{organization} signer", organization))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = DevCertificate(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca.public_bytes(pem))
    files.chain.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    # Created 0600 rather than chmod-ed after: the key is never readable by others.
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(SigningCredentials((cert,), key, "es256").key_pem())
    return files


def dev_credentials(
    directory: Path, *, now: datetime.datetime | None = None
) -> tuple[SigningCredentials, bool]:
    """The development certificate in ``directory``, made on first use or when it runs out.

    Returns the credentials and whether they were just made.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    files = DevCertificate(directory)
    if files.chain.is_file() and files.key.is_file():
        try:
            credentials = load_credentials(files.chain, files.key, now=now + DEV_RENEW_BEFORE)
            return credentials, False
        except CertificateError:
            pass  # expired, expiring or damaged: a development one is simply replaced
    make_dev_certificate(directory, now=now)
    return load_credentials(files.chain, files.key, now=now), True


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
