"""The plugin contract: the one package a handler plugin imports.

It imports nothing of the host (a check in the test suite keeps it so). A
plugin subclasses ``Handler[InputT, SettingsT]``, declares its input with
pydantic models and the field types here, fails with the errors here, and is
tested with ``shortdrama_worker.contract.testing``. See ``docs/plugins.md``.
"""

from shortdrama_worker.contract.context import JobContext, PluginMetrics
from shortdrama_worker.contract.errors import (
    InputError,
    InputUnavailableError,
    JobError,
    PermanentJobError,
    TransientJobError,
)
from shortdrama_worker.contract.fields import (
    IMAGE_TYPES,
    ConsentAttestation,
    FoundReference,
    ImageRef,
    Reference,
    file_ref,
    iter_references,
)
from shortdrama_worker.contract.handler import (
    CONTRACT_VERSION,
    Handler,
    HandlerEnv,
    HandlerInput,
    NoSettings,
)
from shortdrama_worker.contract.sniff import check_file, sniff_content_type
from shortdrama_worker.contract.values import (
    Consent,
    DigitalSourceType,
    FaceBox,
    FetchedInput,
    Health,
    Provenance,
    Resource,
    StoredResult,
    order_faces,
)

__all__ = [
    "CONTRACT_VERSION",
    "IMAGE_TYPES",
    "Consent",
    "ConsentAttestation",
    "DigitalSourceType",
    "FaceBox",
    "FetchedInput",
    "FoundReference",
    "Handler",
    "HandlerEnv",
    "HandlerInput",
    "Health",
    "ImageRef",
    "InputError",
    "InputUnavailableError",
    "JobContext",
    "JobError",
    "NoSettings",
    "PermanentJobError",
    "PluginMetrics",
    "Provenance",
    "Reference",
    "Resource",
    "StoredResult",
    "TransientJobError",
    "check_file",
    "file_ref",
    "iter_references",
    "order_faces",
    "sniff_content_type",
]
