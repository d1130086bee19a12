"""Content Credentials (C2PA) for result images: certificates, manifests, signing, reading.

The host signs every PNG, JPEG and WebP a handler stores (``RunContext``), with
the operator's certificate (``certs``); ``manifest`` says what is asserted,
``signer`` does the signing and reading through c2pa-python.
"""

from shortdrama_worker.provenance.certs import (
    CertificateError,
    SigningCredentials,
    dev_credentials,
    load_credentials,
    make_dev_certificate,
)
from shortdrama_worker.provenance.manifest import InputRecord, JobFacts
from shortdrama_worker.provenance.signer import (
    SIGNED_TYPES,
    ContentCredentials,
    CredentialsReport,
    SignedFile,
    SigningError,
    read_credentials,
)

__all__ = [
    "SIGNED_TYPES",
    "CertificateError",
    "ContentCredentials",
    "CredentialsReport",
    "InputRecord",
    "JobFacts",
    "SignedFile",
    "SigningCredentials",
    "SigningError",
    "dev_credentials",
    "load_credentials",
    "make_dev_certificate",
    "read_credentials",
]
