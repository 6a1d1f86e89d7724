"""S3 from the standard environment: a boto3 client, GDAL's equivalent settings, one-line errors.

boto3 reads the endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, the profile's `endpoint_url`)
and the credential chain (environment, profiles, IRSA); GDAL does not read the endpoint
variables, so every process gridded starts translates them for `/vsis3/`.
"""

from __future__ import annotations

import os
from functools import cache
from urllib.parse import urlparse

from ..errors import ConfigError, GriddedError, OutputError, SourceError

UNSIGNED_ENV = "AWS_NO_SIGN_REQUEST"
REQUESTER_PAYS_ENV = "AWS_REQUEST_PAYER"


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"{uri}: not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def unsigned_requested() -> bool:
    return os.environ.get(UNSIGNED_ENV, "").upper() in ("YES", "TRUE", "1")


def requester_pays() -> bool:
    return os.environ.get(REQUESTER_PAYS_ENV, "").lower() == "requester"


def s3_client(unsigned: bool = False):
    """A boto3 S3 client: standard retries (403 is never retried), and for a non-AWS endpoint
    checksums only when required, which S3-compatible servers accept. One per configuration."""
    keys = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_DEFAULT_REGION")
    return _client(unsigned, tuple(os.environ.get(k) for k in keys))


@cache
def _client(unsigned: bool, _environment: tuple):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    options = {"retries": {"mode": "standard", "max_attempts": 5}}
    session = boto3.session.Session()
    probe = session.client("s3")
    if not _is_aws(probe.meta.endpoint_url):
        options.update(request_checksum_calculation="when_required", response_checksum_validation="when_required",
                       s3={"addressing_style": "path"})
    if unsigned:
        options["signature_version"] = UNSIGNED
    return session.client("s3", config=Config(**options))


def _is_aws(endpoint: str | None) -> bool:
    return endpoint is None or urlparse(endpoint).hostname.endswith(".amazonaws.com")


def gdal_s3_env() -> dict[str, str]:
    """GDAL's settings equivalent to boto3's endpoint: AWS_S3_ENDPOINT, AWS_HTTPS, AWS_VIRTUAL_HOSTING."""
    env = {}
    client = s3_client()
    endpoint = client.meta.endpoint_url
    if not _is_aws(endpoint):
        parsed = urlparse(endpoint)
        env["AWS_S3_ENDPOINT"] = parsed.netloc + parsed.path.rstrip("/")
        env["AWS_HTTPS"] = "YES" if parsed.scheme == "https" else "NO"
        env["AWS_VIRTUAL_HOSTING"] = "FALSE"
    region = client.meta.region_name
    if region and "AWS_REGION" not in os.environ:
        env["AWS_REGION"] = region
    return env


def is_remote(href: str) -> bool:
    """True for an href on an object store or web server (s3://, https://), false for a local path or file:// URL."""
    return "://" in href and not href.startswith("file:")


def gdal_path(href: str) -> str:
    """A source href as GDAL opens it: /vsis3/ for s3://, /vsicurl/ for http(s), else the path."""
    parsed = urlparse(href)
    if parsed.scheme == "s3":
        return f"/vsis3/{parsed.netloc}{parsed.path}"
    if parsed.scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if parsed.scheme == "file":
        return parsed.path
    return href


def translate_error(err: Exception, uri: str, *, source: bool) -> GriddedError:
    """A botocore failure -> one line naming the URI and the likely fix (never credentials)."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    cls = SourceError if source else OutputError
    if isinstance(err, NoCredentialsError):
        return ConfigError(f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                           f"(or AWS_PROFILE), or pass --unsigned for a public source")
    if isinstance(err, EndpointConnectionError):
        return ConfigError(f"{uri}: cannot reach the S3 endpoint ({err.kwargs.get('endpoint_url', '?')}); "
                           f"check AWS_ENDPOINT_URL")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return ConfigError(f"{uri}: bucket does not exist; check the bucket name (and AWS_ENDPOINT_URL)")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return ConfigError(f"{uri}: no such object; check the key")
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            return ConfigError(f"{uri}: access denied ({code or status}); check the credentials and the bucket policy")
        return cls(f"{uri}: S3 error {code or status}; retry later or check the endpoint")
    return cls(f"{uri}: {err.__class__.__name__}: {err}")
