"""Content Credentials: every result image is signed, names its job, and validates.

Manifests are read back with c2pa-python's Reader (the C2PA reference
implementation), which checks the signature, the certificate profile and the
hash of the file's bytes. Through the application, each built-in kind runs
against its fake back end (ComfyUI, ARK, DashScope) with AWS on moto.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fakes.ark import FakeArk
from fakes.comfyui import FakeComfyUI, png_bytes
from fakes.dashscope import FakeDashScope
from PIL import Image
from support import submit, wait_for

from shortdrama_worker.app import create_app
from shortdrama_worker.cli import main
from shortdrama_worker.contract import Consent, Provenance
from shortdrama_worker.handlers.face_mask import FaceMaskHandler
from shortdrama_worker.handlers.face_swap import FaceSwapHandler
from shortdrama_worker.handlers.full_face_swap import FullFaceSwapHandler
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.provenance import (
    CertificateError,
    ContentCredentials,
    CredentialsReport,
    InputRecord,
    JobFacts,
    load_credentials,
    read_credentials,
)
from shortdrama_worker.provenance.certs import DevCertificate
from shortdrama_worker.provenance.startup import open_content_credentials
from shortdrama_worker.settings import ProvenanceSettings
from shortdrama_worker.web.auth import digest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "face.png"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
CONSENT = {"release_form": "RF-2026-0042", "attested_by": "casting: j.doe"}
EDITOR_KEY = "sdw_editor_key"
MASK_ONLY = HandlerRegistry.from_classes({"face_mask": FaceMaskHandler})
SWAP_ONLY = HandlerRegistry.from_classes({"face_swap": FaceSwapHandler})
FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def encode(image: Image.Image, content_type: str = "image/png") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=FORMATS[content_type])
    return buffer.getvalue()


def data_uri(data: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def sample_jpeg() -> bytes:
    """The sample portrait, small enough to submit inline."""
    return encode(Image.open(SAMPLE).convert("RGB"), "image/jpeg")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def photo(width: int, height: int) -> Image.Image:
    """A smooth picture with no black in it (black means "mask" to the fake ARK)."""
    ramp = Image.linear_gradient("L")
    across = ramp.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    return Image.merge("RGB", (across, ramp.resize((width, height)), across)).point(
        lambda v: 40 + v * 3 // 4
    )


def actions(report: CredentialsReport) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = report.assertion("c2pa.actions.v2")["actions"]
    return found


def ingredient_hashes(report: CredentialsReport) -> dict[str, str]:
    """Ingredient title (the input field) → the hash it was recorded with."""
    return {
        i["title"]: i["instance_id"].removeprefix("sha256:")
        for i in report.active.get("ingredients", [])
    }


@pytest.fixture
def signer(dev_certificate: DevCertificate) -> ContentCredentials:
    return ContentCredentials(
        load_credentials(dev_certificate.chain, dev_certificate.key), timestamp_url=None
    )


@pytest.fixture
def trust(dev_certificate: DevCertificate) -> str:
    return dev_certificate.ca.read_text()


FACTS = JobFacts("job-42", "face_mask", 1, "editor", 1_790_000_000.0, "mask.png")


# --- signing and reading ----------------------------------------------------------------------


@pytest.mark.parametrize("content_type", list(FORMATS))
def test_each_image_format_is_signed_with_a_manifest_that_names_the_job(
    signer: ContentCredentials, trust: str, content_type: str
) -> None:
    source = encode(photo(320, 240), content_type)
    frame = InputRecord("image_url", encode(photo(64, 48)), "image/png")
    signed = signer.sign(source, content_type, FACTS, Provenance(), [frame])

    report = read_credentials(signed.data, content_type, trust_anchors=trust)
    assert report.valid and report.trusted, report.failures
    assert report.manifest_id == signed.manifest_id
    job = report.assertion()
    assert (job["job_id"], job["kind"], job["submitted_by"]) == ("job-42", "face_mask", "editor")
    assert job["inputs"] == [
        {
            "field": "image_url",
            "sha256": frame.sha256,
            "content_type": "image/png",
            "bytes": len(frame.data),
        }
    ]
    assert ingredient_hashes(report) == {"image_url": frame.sha256}
    # An edit of the frame: opened, then edited, and no model claimed.
    assert [a["action"] for a in actions(report)] == ["c2pa.opened", "c2pa.edited"]
    assert "digitalSourceType" not in actions(report)[1]
    # Without the CA the manifest still validates; it is just not trusted.
    untrusted = read_credentials(signed.data, content_type)
    assert untrusted.valid and not untrusted.trusted


def test_a_tampered_file_fails_validation(signer: ContentCredentials) -> None:
    source = encode(photo(320, 240))
    signed = signer.sign(source, "image/png", FACTS, Provenance(), []).data
    image = Image.open(io.BytesIO(signed))
    image.load()
    # Same manifest, other pixels: re-encode the image with one pixel changed
    # and put the original manifest chunk (caBX) back in front of IDAT.
    manifest_chunk = _png_chunk(signed, b"caBX")
    image.putpixel((5, 5), (0, 0, 0))
    altered = _insert_before_idat(encode(image), manifest_chunk)
    report = read_credentials(altered, "image/png")
    assert not report.valid
    assert any("dataHash.mismatch" in f for f in report.failures), report.failures

    flipped = bytearray(signed)
    flipped[-40] ^= 0xFF  # inside the last IDAT
    assert not read_credentials(bytes(flipped), "image/png").valid


def _png_chunk(png: bytes, kind: bytes) -> bytes:
    at = 8
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        if png[at + 4 : at + 8] == kind:
            return png[at : at + 12 + length]
        at += 12 + length
    raise AssertionError(f"no {kind!r} chunk")


def _insert_before_idat(png: bytes, chunk: bytes) -> bytes:
    idat = png.index(b"IDAT") - 4
    return png[:idat] + chunk + png[idat:]


def test_a_model_edit_records_source_type_model_consent_and_the_inputs_provenance(
    signer: ContentCredentials, trust: str
) -> None:
    # The masked frame is itself a signed result: its manifest comes along.
    masked = signer.sign(encode(photo(320, 240)), "image/png", FACTS, Provenance(), [])
    face = encode(photo(90, 90), "image/jpeg")
    provenance = Provenance(
        action="c2pa.edited",
        source_type="compositeWithTrainedAlgorithmicMedia",
        model="doubao-seedream-4-0-250828",
        provider="ark",
        parent="masked_image",
        consent={"target_face": Consent("RF-1", "casting")},
        details={"provider_watermark": True},
    )
    inputs = [
        InputRecord("target_face", face, "image/jpeg"),
        InputRecord("masked_image", masked.data, "image/png"),
    ]
    facts = JobFacts("job-43", "face_swap", 2, None, 1_790_000_000.0, "face_swap.jpg")
    out = encode(photo(320, 240), "image/jpeg")
    signed = signer.sign(out, "image/jpeg", facts, provenance, inputs)

    report = read_credentials(signed.data, "image/jpeg", trust_anchors=trust)
    assert report.trusted, report.failures
    _, edited = actions(report)
    assert edited["digitalSourceType"] == IPTC + "compositeWithTrainedAlgorithmicMedia"
    assert edited["softwareAgent"]["name"] == "doubao-seedream-4-0-250828 via ark"
    ingredients = {i["title"]: i for i in report.active["ingredients"]}
    assert ingredients["masked_image"]["relationship"] == "parentOf"
    assert ingredients["target_face"]["relationship"] == "inputTo"
    assert ingredients["masked_image"]["active_manifest"] == masked.manifest_id
    assert masked.manifest_id in report.store["manifests"]
    job = report.assertion()
    assert job["consent"]["target_face"] == {
        "release_form": "RF-1",
        "attested_by": "casting",
        "input_sha256": sha256(face),
    }
    assert job["details"] == {"provider_watermark": True}
    assert (job["model"], job["provider"], job["attempt"]) == (
        "doubao-seedream-4-0-250828",
        "ark",
        2,
    )


def test_inputs_c2pa_cannot_parse_are_recorded_by_their_hash(
    signer: ContentCredentials, trust: str
) -> None:
    truncated = encode(photo(64, 48))[:60]  # a PNG header and little else
    inputs = [
        InputRecord("image_url", truncated, "image/png"),
        InputRecord("voice", b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg"),
    ]
    signed = signer.sign(encode(photo(64, 48)), "image/png", FACTS, Provenance(), inputs)
    report = read_credentials(signed.data, "image/png", trust_anchors=trust)
    assert report.trusted, report.failures
    assert ingredient_hashes(report) == {r.field: r.sha256 for r in inputs}


def test_without_an_input_to_edit_the_result_is_recorded_as_created(
    signer: ContentCredentials,
) -> None:
    provenance = Provenance(action="c2pa.edited", source_type="trainedAlgorithmicMedia")
    signed = signer.sign(encode(photo(64, 64)), "image/png", FACTS, provenance, [])
    [created] = actions(read_credentials(signed.data, "image/png"))
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == IPTC + "trainedAlgorithmicMedia"


# --- certificates at start-up ------------------------------------------------------------------


class Pki:
    """A test CA that issues signing certificates with chosen defects."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.now = datetime.datetime.now(datetime.UTC)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
        self.ca = self._builder(self.ca_name, self.ca_key.public_key(), ca=True).sign(
            self.ca_key, hashes.SHA256()
        )

    def _builder(
        self,
        subject: x509.Name,
        public_key: Any,
        *,
        ca: bool,
        days: tuple[int, int] = (-1, 30),
        issuer: x509.Name | None = None,
    ) -> x509.CertificateBuilder:
        usage = dict.fromkeys(
            ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or self.ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now + datetime.timedelta(days=days[0]))
            .not_valid_after(self.now + datetime.timedelta(days=days[1]))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                    **usage,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
        )

    def issue(
        self,
        *,
        eku: list[x509.ObjectIdentifier] | None = None,
        days: tuple[int, int] = (-1, 30),
        ca: bool = False,
        self_signed: bool = False,
        other_key: bool = False,
        chain_order: str = "leaf-first",
    ) -> ProvenanceSettings:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test signer")])
        issuer = name if self_signed else None
        builder = self._builder(name, key.public_key(), ca=ca, days=days, issuer=issuer)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(eku or [ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        cert = builder.sign(key if self_signed else self.ca_key, hashes.SHA256())
        pem = serialization.Encoding.PEM
        certs = [cert.public_bytes(pem), self.ca.public_bytes(pem)]
        if chain_order != "leaf-first":
            certs.reverse()
        chain = self.directory / f"chain-{cert.serial_number}.pem"
        chain.write_bytes(b"".join(certs))
        signing_key = ec.generate_private_key(ec.SECP256R1()) if other_key else key
        key_file = self.directory / f"key-{cert.serial_number}.pem"
        key_file.write_bytes(
            signing_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return ProvenanceSettings(certificate=chain, private_key=key_file)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def test_a_certificate_from_a_ca_meeting_the_profile_is_accepted(pki: Pki) -> None:
    signer = open_content_credentials(pki.issue())
    assert signer is not None and signer.credentials.algorithm == "es256"


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        ({"days": (-30, -1)}, "expired on"),
        ({"days": (2, 30)}, "is not valid before"),
        ({"other_key": True}, "does not belong to the signing certificate"),
        ({"self_signed": True}, "self-signed"),
        ({"ca": True}, "it is a CA certificate"),
        ({"eku": [ExtendedKeyUsageOID.SERVER_AUTH]}, "extended key usage has none of"),
        ({"eku": [x509.ObjectIdentifier("2.5.29.37.0")]}, "anyExtendedKeyUsage"),
        ({"chain_order": "ca-first"}, "does not belong to the signing certificate"),
    ],
)
def test_start_up_refuses_a_certificate_it_cannot_sign_with(
    pki: Pki, defect: dict[str, Any], message: str
) -> None:
    with pytest.raises(CertificateError, match=message):
        open_content_credentials(pki.issue(**defect))


def test_start_up_refuses_missing_files_and_missing_configuration(tmp_path: Path) -> None:
    with pytest.raises(
        CertificateError, match=r"provenance\.certificate and provenance\.private_key"
    ):
        open_content_credentials(ProvenanceSettings())
    missing = ProvenanceSettings(certificate=tmp_path / "no.pem", private_key=tmp_path / "no.key")
    with pytest.raises(CertificateError, match="cannot read the certificate"):
        open_content_credentials(missing)
    assert open_content_credentials(ProvenanceSettings(enabled=False)) is None


async def test_the_application_does_not_start_with_an_expired_certificate(
    pki: Pki, make_settings: Callable[..., Any]
) -> None:
    expired = pki.issue(days=(-30, -1))
    settings = make_settings(provenance=expired.model_dump(mode="json", exclude_none=True))
    runner = web.AppRunner(create_app(settings, registry=MASK_ONLY))
    try:
        with pytest.raises(CertificateError, match="expired on"):
            await runner.setup()
    finally:
        await runner.cleanup()


def test_serve_exits_with_the_reason_for_a_mismatched_key(pki: Pki, tmp_path: Path) -> None:
    bad = pki.issue(other_key=True)
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[provenance]\ncertificate = "{bad.certificate}"\nprivate_key = "{bad.private_key}"\n'
        # Nothing listens here: start-up must stop at the certificate, before AWS.
        '[aws]\nendpoint_url = "http://127.0.0.1:9"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHORTDRAMA_")}
    done = subprocess.run(
        [sys.executable, "-m", "shortdrama_worker", "--config", str(config), "serve"],
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "does not belong to the signing certificate" in done.stderr
    assert "PRIVATE KEY" not in done.stderr + done.stdout


def test_the_dev_certificate_is_made_once_and_kept(tmp_path: Path) -> None:
    settings = ProvenanceSettings(dev_certificate=True, dev_certificate_dir=tmp_path / "dev")
    first = open_content_credentials(settings)
    second = open_content_credentials(settings)
    assert first is not None and second is not None
    assert first.credentials.leaf == second.credentials.leaf
    assert (tmp_path / "dev" / "signer.key").stat().st_mode & 0o077 == 0


def test_certs_command_writes_a_chain_the_daemon_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["certs", "--dev", "--out", str(tmp_path / "c2pa")])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert f'certificate = "{tmp_path / "c2pa" / "chain.pem"}"' in printed
    credentials = load_credentials(
        tmp_path / "c2pa" / "chain.pem", tmp_path / "c2pa" / "signer.key"
    )
    assert credentials.leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    with pytest.raises(SystemExit) as again:
        main(["certs", "--dev", "--out", str(tmp_path / "c2pa")])
    assert again.value.code == 2  # never overwrites a key


# --- through the application -------------------------------------------------------------------


async def _signed_result(
    client: Any, job: dict[str, Any], trust: str, key: str | None = None
) -> tuple[bytes, CredentialsReport]:
    url = job["result_url"]
    if key is not None:
        url = next(f["url"] for f in job["result"]["files"] if f["key"] == key)
    async with client.session.get(url) as response:
        assert response.status == 200
        data: bytes = await response.read()
    content_type = response.headers["Content-Type"]
    return data, read_credentials(data, content_type, trust_anchors=trust)


def _names_the_job(report: CredentialsReport, job: dict[str, Any]) -> None:
    assert report.trusted, report.failures
    assembled = report.assertion()
    assert (assembled["job_id"], assembled["kind"]) == (job["job_id"], job["kind"])
    assert report.manifest_id in {f["manifest_id"] for f in job["result"]["files"]}


async def test_face_mask_result_is_signed_naming_job_key_and_input(
    make_settings: Callable[..., Any],
    start_app: Any,
    trust: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(
        auth={"enabled": True, "keys": [{"id": "editor", "sha256": digest(EDITOR_KEY)}]}
    )
    _, client = await start_app(
        settings, HandlerRegistry.from_classes({"face_mask": FaceMaskHandler})
    )
    frame = sample_jpeg()
    auth = {"Authorization": f"Bearer {EDITOR_KEY}"}
    payload = {"image_url": data_uri(frame, "image/jpeg")}
    job_id = await submit(client, "face-mask", payload, headers=auth)
    job = await wait_as(client, job_id, auth)

    data, report = await _signed_result(client, job, trust)
    _names_the_job(report, job)
    assert job["manifest_id"] == report.manifest_id
    assert report.assertion()["submitted_by"] == "editor"
    assert ingredient_hashes(report) == {"image_url": sha256(frame)}
    assert report.assertion()["details"]["detector"].startswith("local")

    # `verify` prints the manifest and says it validates; a tampered copy fails.
    result = tmp_path / "mask.png"
    result.write_bytes(data)
    with pytest.raises(SystemExit) as ok:
        main(["verify", str(result), "--trust", _ca_file(tmp_path, trust)])
    printed = capsys.readouterr().out
    assert ok.value.code == 0, printed
    assert f"manifest:  {report.manifest_id}" in printed
    assert f"job:       {job_id} (face_mask), submitted by editor" in printed
    assert "valid:     signature and content hashes check out; signer trusted" in printed
    tampered = bytearray(data)
    tampered[-40] ^= 0xFF
    result.write_bytes(bytes(tampered))
    with pytest.raises(SystemExit) as bad:
        main(["verify", str(result)])
    assert bad.value.code == 1
    assert "INVALID" in capsys.readouterr().out


async def wait_as(client: Any, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """Poll the job with an API key until it finishes."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, Any] = await (
            await client.get(f"/api/v1/jobs/{job_id}", headers=headers)
        ).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            assert job["status"] == "completed", job
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def _ca_file(directory: Path, pem: str) -> str:
    path = directory / "ca.pem"
    path.write_text(pem)
    return str(path)


async def test_signing_can_be_turned_off(make_settings: Callable[..., Any], start_app: Any) -> None:
    settings = make_settings(provenance={"enabled": False})
    _, client = await start_app(
        settings, HandlerRegistry.from_classes({"face_mask": FaceMaskHandler})
    )
    job = await wait_for(
        client,
        await submit(client, "face-mask", {"image_url": data_uri(sample_jpeg(), "image/jpeg")}),
    )
    assert job["status"] == "completed", job
    assert job["manifest_id"] is None
    async with client.session.get(job["result_url"]) as response:
        assert read_credentials(await response.read(), "image/png").state is None


@pytest.fixture
async def comfy() -> AsyncIterator[FakeComfyUI]:
    async with FakeComfyUI() as fake:
        yield fake


COMFY_FAST = {"poll_interval_s": 0.5, "reconnect_attempts": 3, "reconnect_backoff_max_s": 0.2}
COMFY_INPUT = png_bytes(7, size=(80, 60))


@pytest.mark.parametrize(
    ("kind", "slug", "payload", "field"),
    [
        ("comfy_camera_angle", "camera-angle", {"image": COMFY_INPUT, "move": "close_up"}, "image"),
        ("qwen_edit", "qwen-image-edit", {"images": [COMFY_INPUT], "prompt": "rain"}, "images[0]"),
        (
            "comfy_workflow",
            "comfy-workflow",
            {
                "workflow": "camera_angle",
                "images": {"image": COMFY_INPUT},
                "values": {"prompt": "将镜头向前移动 Move the camera forward."},
            },
            "images.image",
        ),
    ],
)
async def test_comfyui_results_are_signed_as_model_generated(
    comfy: FakeComfyUI,
    make_settings: Callable[..., Any],
    start_app: Any,
    trust: str,
    kind: str,
    slug: str,
    payload: dict[str, Any],
    field: str,
) -> None:
    from shortdrama_worker.comfy.workflows import packaged_workflow_dir

    section: dict[str, Any] = {"base_url": comfy.url, **COMFY_FAST}
    if kind == "comfy_workflow":
        section |= {"enabled": True, "workflow_dir": str(packaged_workflow_dir())}
    settings = make_settings(handlers={"allow": [kind], "options": {kind: section}})
    _, client = await start_app(settings)
    job = await wait_for(client, await submit(client, slug, _inline(payload)))
    assert job["status"] == "completed", job

    _, report = await _signed_result(client, job, trust)
    _names_the_job(report, job)
    assert ingredient_hashes(report) == {field: sha256(COMFY_INPUT)}
    _, edited = actions(report)
    assert edited["digitalSourceType"] == IPTC + "trainedAlgorithmicMedia"
    assert report.assertion()["provider"] == "comfyui"


def _inline(value: Any) -> Any:
    """The payload with every image as a data: URI."""
    if isinstance(value, bytes):
        return data_uri(value)
    if isinstance(value, dict):
        return {k: _inline(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_inline(v) for v in value]
    return value


@pytest.fixture
async def ark() -> AsyncIterator[FakeArk]:
    async with FakeArk() as fake:
        yield fake


def _ark(ark: FakeArk) -> dict[str, Any]:
    fast = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "requests_per_minute": 0}
    return {"ark": {"base_url": ark.base_url, "api_key": ark.api_key, **fast}}


async def test_face_swap_result_records_model_consent_and_watermark(
    ark: FakeArk, make_settings: Callable[..., Any], start_app: Any, trust: str
) -> None:
    settings = make_settings(handlers={"options": {"face_swap": _ark(ark)}})
    _, client = await start_app(
        settings, HandlerRegistry.from_classes({"face_swap": FaceSwapHandler})
    )
    masked = encode(photo(1280, 720))
    face = encode(photo(200, 200), "image/jpeg")
    payload = {
        "masked_image": data_uri(masked),
        "target_face": data_uri(face, "image/jpeg"),
        "target_face_consent": CONSENT,
    }
    job = await wait_for(client, await submit(client, "face-swap", payload), timeout=60)
    assert job["status"] == "completed", job
    # Watermark on by default, and said so; consent recorded on the job.
    assert job["result"]["watermark"] is True and ark.requests[0].body["watermark"] is True
    assert job["result"]["consent"] == {"target_face": CONSENT}

    _, report = await _signed_result(client, job, trust)
    _names_the_job(report, job)
    assert ingredient_hashes(report) == {
        "masked_image": sha256(masked),
        "target_face": sha256(face),
    }
    signed = report.assertion()
    assert signed["model"] == "doubao-seedream-4-0-250828" and signed["provider"] == "ark"
    assert signed["consent"]["target_face"] == {**CONSENT, "input_sha256": sha256(face)}
    assert signed["details"]["provider_watermark"] is True
    assert actions(report)[1]["digitalSourceType"] == IPTC + "compositeWithTrainedAlgorithmicMedia"


async def test_full_face_swap_signs_the_swap_and_the_mask(
    ark: FakeArk, make_settings: Callable[..., Any], start_app: Any, trust: str
) -> None:
    async with FakeDashScope(faces=[(0.60, 0.20, 0.75, 0.55)]) as dashscope:
        section = {
            **_ark(ark),
            "detector": "qwen_vl",
            "dashscope": {"base_url": dashscope.base_url, "api_key": dashscope.api_key},
        }
        settings = make_settings(handlers={"options": {"full_face_swap": section}})
        registry = HandlerRegistry.from_classes({"full_face_swap": FullFaceSwapHandler})
        _, client = await start_app(settings, registry)
        source = encode(photo(1600, 900))
        payload = {
            "source_image": data_uri(source),
            "target_face": data_uri(encode(photo(120, 120))),
            "target_face_consent": CONSENT,
        }
        job = await wait_for(client, await submit(client, "full-face-swap", payload), timeout=60)
    assert job["status"] == "completed", job

    _, swap = await _signed_result(client, job, trust)
    _names_the_job(swap, job)
    assert swap.assertion()["consent"]["target_face"]["release_form"] == CONSENT["release_form"]
    assert actions(swap)[1]["digitalSourceType"] == IPTC + "compositeWithTrainedAlgorithmicMedia"
    _, mask = await _signed_result(client, job, trust, key=job["result"]["mask"]["key"])
    _names_the_job(mask, job)
    assert "digitalSourceType" not in actions(mask)[1]  # drawn, not generated
    assert ingredient_hashes(mask)["source_image"] == sha256(source)
    assert mask.manifest_id != swap.manifest_id


@pytest.mark.parametrize(
    ("slug", "cls", "payload"),
    [
        ("face-swap", FaceSwapHandler, {"masked_image": "https://x.example/m.png"}),
        ("full-face-swap", FullFaceSwapHandler, {"source_image": "https://x.example/s.png"}),
    ],
)
async def test_a_face_swap_without_consent_is_refused_naming_the_field(
    make_settings: Callable[..., Any],
    start_app: Any,
    slug: str,
    cls: type[Any],
    payload: dict[str, Any],
) -> None:
    kind = slug.replace("-", "_")
    _, client = await start_app(make_settings(), HandlerRegistry.from_classes({kind: cls}))
    payload = {**payload, "target_face": "https://x.example/face.png"}
    resp = await client.post(f"/api/v1/{slug}/jobs", json=payload)
    assert resp.status == 422
    body = await resp.json()
    assert [f["field"] for f in body["error"]["fields"]] == ["target_face_consent"]
    half = {**payload, "target_face_consent": {"release_form": "RF-1"}}
    resp = await client.post(f"/api/v1/{slug}/jobs", json=half)
    assert resp.status == 422
    fields = [f["field"] for f in (await resp.json())["error"]["fields"]]
    assert fields == ["target_face_consent.attested_by"]
