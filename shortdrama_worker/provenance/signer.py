"""Signing result images with Content Credentials, and reading them back (c2pa-python).

c2pa-python wraps the C2PA reference implementation (c2pa-rs); signing and
validating are CPU work in native code, so the async entry points run them in
a worker thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import c2pa

from shortdrama_worker import __version__
from shortdrama_worker.contract import Provenance
from shortdrama_worker.provenance.certs import CertificateError, SigningCredentials
from shortdrama_worker.provenance.manifest import (
    JOB_ASSERTION,
    InputRecord,
    JobFacts,
    build_manifest,
)

SIGNED_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
"""Result content types the host signs."""

# Never reach out while signing or reading: a manifest in an input may name a
# remote manifest or an OCSP responder, and the worker fetches nothing its
# operator did not configure. Ingredient and claim thumbnails stay off, so an
# input's pixels are never copied into a result's manifest.
_C2PA_SETTINGS: dict[str, Any] = {
    "builder": {"thumbnail": {"enabled": False}},
    "verify": {"ocsp_fetch": False, "remote_manifest_fetch": False},
}
_ALGORITHMS = {
    "es256": c2pa.C2paSigningAlg.ES256,
    "es384": c2pa.C2paSigningAlg.ES384,
    "es512": c2pa.C2paSigningAlg.ES512,
    "ps256": c2pa.C2paSigningAlg.PS256,
    "ed25519": c2pa.C2paSigningAlg.ED25519,
}
# Formats whose embedded manifests are looked for in inputs.
_READABLE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
# 1×1 RGB PNG: the start-up self-test signs and validates it.
_PROBE_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415478da63f8ffff3f0005fe02fe0ddfd3f40000000049454e44ae426082"
)


class SigningError(Exception):
    """A file could not be signed; the message is c2pa's reason."""


@dataclass(frozen=True)
class SignedFile:
    data: bytes
    manifest_id: str


class ContentCredentials:
    """Signs files with one certificate; safe to share between jobs and threads."""

    def __init__(self, credentials: SigningCredentials, *, timestamp_url: str | None) -> None:
        self.credentials = credentials
        self._info = c2pa.C2paSignerInfo(
            _ALGORITHMS[credentials.algorithm],
            credentials.chain_pem(),
            credentials.key_pem(),
            timestamp_url,
        )
        self._settings = json.dumps(_C2PA_SETTINGS)

    def sign(
        self,
        data: bytes,
        content_type: str,
        facts: JobFacts,
        provenance: Provenance,
        inputs: list[InputRecord],
    ) -> SignedFile:
        """``data`` with a signed manifest embedded (blocking: call it in a thread)."""
        label = f"urn:c2pa:{uuid.uuid4()}"
        definition, ingredients = build_manifest(
            facts, provenance, inputs, label=label, content_type=content_type, version=__version__
        )
        # An input that carries Content Credentials is added from its bytes, so its
        # manifest travels along; any other is described by its hash alone (c2pa
        # would only parse it, and would refuse a format it does not know).
        carried = [i for i in ingredients if self._has_credentials(i.record)]
        definition["ingredients"] = [i.definition for i in ingredients if i not in carried]
        out = io.BytesIO()
        try:
            # A Signer and Context per file: each native handle then has one user,
            # and creating them costs microseconds next to hashing the image.
            with (
                c2pa.Signer.from_info(self._info) as signer,
                c2pa.Builder(definition, context=self._context()) as builder,
            ):
                for ingredient in carried:
                    builder.add_ingredient(
                        ingredient.definition,
                        ingredient.record.content_type or "application/octet-stream",
                        io.BytesIO(ingredient.record.data),
                    )
                builder.sign(signer, content_type, io.BytesIO(data), out)
        except c2pa.C2paError as exc:
            raise SigningError(str(exc)) from None
        return SignedFile(out.getvalue(), label)

    def _has_credentials(self, record: InputRecord) -> bool:
        if record.content_type not in _READABLE_TYPES:
            return False
        try:
            reader = c2pa.Reader.try_create(
                record.content_type, io.BytesIO(record.data), None, self._context()
            )
        except c2pa.C2paError:
            return False  # unreadable credentials: the input is recorded by its hash
        if reader is None:
            return False
        reader.close()
        return True

    def _context(self) -> Any:
        """A fresh c2pa context with our settings (one per native handle's user)."""
        return c2pa.Context(settings=c2pa.Settings.from_json(self._settings))

    async def sign_async(
        self,
        data: bytes,
        content_type: str,
        facts: JobFacts,
        provenance: Provenance,
        inputs: list[InputRecord],
    ) -> SignedFile:
        return await asyncio.to_thread(self.sign, data, content_type, facts, provenance, inputs)

    def self_test(self) -> None:
        """Sign and validate a tiny image, so that what c2pa refuses stops start-up."""
        facts = JobFacts("self-test", "self-test", 1, None, 0.0, "probe.png")
        try:
            signed = self.sign(_PROBE_PNG, "image/png", facts, Provenance(), [])
        except SigningError as exc:
            raise CertificateError(f"c2pa refuses to sign with this certificate: {exc}") from None
        report = read_credentials(signed.data, "image/png")
        if not report.valid:
            raise CertificateError(
                "a manifest signed with this certificate does not validate: "
                + "; ".join(report.failures)
            )


@dataclass(frozen=True)
class CredentialsReport:
    """What a reader found in a file."""

    state: str | None
    """c2pa's validation state: ``Trusted``, ``Valid``, ``Invalid``; ``None``: no manifest."""
    store: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Signature and hashes check out (whether or not the signer is trusted)."""
        return self.state in ("Valid", "Trusted")

    @property
    def trusted(self) -> bool:
        return self.state == "Trusted"

    @property
    def manifest_id(self) -> str | None:
        active = self.store.get("active_manifest")
        return str(active) if active else None

    @property
    def active(self) -> dict[str, Any]:
        manifest: dict[str, Any] = self.store.get("manifests", {}).get(self.manifest_id, {})
        return manifest

    def assertion(self, label: str = JOB_ASSERTION) -> dict[str, Any]:
        """The data of an assertion of the active manifest (empty if absent)."""
        for assertion in self.active.get("assertions", []):
            if assertion.get("label") == label:
                data: dict[str, Any] = assertion.get("data", {})
                return data
        return {}


def read_credentials(
    data: bytes, content_type: str | None = None, *, trust_anchors: str | None = None
) -> CredentialsReport:
    """Read and validate the Content Credentials of ``data``.

    ``trust_anchors`` (PEM) lists the CAs whose signers count as trusted; without
    it a correct manifest is ``Valid`` but not ``Trusted``.
    """
    settings: dict[str, Any] = dict(_C2PA_SETTINGS)
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
    context = c2pa.Context(settings=c2pa.Settings.from_dict(settings))
    try:
        reader = c2pa.Reader.try_create(content_type, io.BytesIO(data), None, context)
    except c2pa.C2paError as exc:
        return CredentialsReport("Invalid", failures=[f"unreadable manifest: {exc}"])
    if reader is None:
        return CredentialsReport(None)
    with reader:
        store = json.loads(reader.json())
    results = store.get("validation_results", {}).get("activeManifest", {})
    failures = [
        f"{f.get('code')}: {f.get('explanation', '')}"
        for f in results.get("failure", [])
        if f.get("code") != "signingCredential.untrusted"  # trust is reported apart
    ]
    return CredentialsReport(store.get("validation_state"), store, failures)


async def read_credentials_async(
    data: bytes, content_type: str | None = None, *, trust_anchors: str | None = None
) -> CredentialsReport:
    return await asyncio.to_thread(
        read_credentials, data, content_type, trust_anchors=trust_anchors
    )
