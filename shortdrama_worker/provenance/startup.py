"""Start-up: the signing certificate from the settings, checked before any job runs."""

from __future__ import annotations

import structlog

from shortdrama_worker.provenance.certs import (
    CertificateError,
    default_dev_dir,
    dev_credentials,
    load_credentials,
)
from shortdrama_worker.provenance.signer import ContentCredentials
from shortdrama_worker.settings import ProvenanceSettings

log = structlog.get_logger("shortdrama_worker.provenance")


def open_content_credentials(settings: ProvenanceSettings) -> ContentCredentials | None:
    """The signer the settings ask for, or ``None`` when signing is off.

    Raises ``CertificateError`` (naming the file and the rule broken) for a
    missing, unreadable, expired, mismatched or profile-violating certificate,
    so the daemon never starts to write results nobody can verify.
    """
    if not settings.enabled:
        log.warning("content_credentials_disabled")
        return None
    if settings.certificate is not None and settings.private_key is not None:
        credentials = load_credentials(settings.certificate, settings.private_key)
        source = str(settings.certificate)
    elif settings.dev_certificate:
        directory = settings.dev_certificate_dir or default_dev_dir()
        credentials, made = dev_credentials(directory)
        source = str(directory)
        log.warning(
            "content_credentials_dev_certificate",
            directory=source,
            made=made,
            note="development only: verifiers trust it only with its ca.pem",
        )
    else:
        raise CertificateError(
            "provenance.enabled needs provenance.certificate and provenance.private_key "
            "(PEM files; see docs/provenance.md), or provenance.dev_certificate = true for "
            "development, or provenance.enabled = false to write unsigned results"
        )
    signer = ContentCredentials(credentials, timestamp_url=settings.timestamp_url)
    signer.self_test()
    log.info("content_credentials_ready", source=source, **credentials.describe())
    return signer
