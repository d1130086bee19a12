"""Result files in S3 and the URLs clients fetch them by.

Key layout: ``{prefix}/{kind}/{YYYY}/{MM}/{DD}/{task_id}/{attempt}/{name}``,
dated by the job's creation, so a lifecycle rule can expire old days and an
operator can find a job's files from its id and date. The attempt keeps a run
that lost its lease from overwriting the file of the run that completed.
Staged inputs (``data:`` URIs sent to the API) go to
``{input_prefix}/{task_id}/{submit}/{field}``, ``submit`` unique to the
request, so a refused or repeated submit never overwrites a job's inputs.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from shortdrama_worker.settings import ResultSettings


class ResultStoreError(Exception):
    """S3 could not be reached or refused the write."""


class ResultStore:
    """Writes results and inputs to the bucket and makes their URLs."""

    def __init__(self, client: Any, settings: ResultSettings) -> None:
        self._s3 = client
        self.settings = settings
        self.bucket = settings.bucket

    def result_key(
        self, kind: str, task_id: str, created_at: float, attempt: int, name: str
    ) -> str:
        day = time.strftime("%Y/%m/%d", time.gmtime(created_at))
        return f"{self.settings.prefix}/{kind}/{day}/{task_id}/{attempt}/{name}"

    def input_key(self, task_id: str, submit: str, field: str) -> str:
        return f"{self.settings.input_prefix}/{task_id}/{submit}/{field}"

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            await self._s3.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            raise ResultStoreError(f"S3 put {key} failed: {exc}") from exc

    async def delete(self, keys: list[str]) -> None:
        """Remove objects (best effort is the caller's choice: this raises on failure)."""
        for key in keys:
            try:
                await self._s3.delete_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError, OSError) as exc:
                raise ResultStoreError(f"S3 delete {key} failed: {exc}") from exc

    async def url(self, key: str) -> str:
        """The CDN URL when a domain is configured, else a presigned GET URL."""
        if self.settings.cdn_domain:
            domain = self.settings.cdn_domain.removeprefix("https://").rstrip("/")
            return f"https://{domain}/{quote(key)}"
        url: str = await self._s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.settings.presign_expiry_s,
        )
        return url
