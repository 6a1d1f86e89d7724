"""S3 from the standard environment: a boto3 client, GDAL's equivalent settings, one-line errors.

boto3 reads the endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, the profile's `endpoint_url`)
and the credential chain (environment, profiles, IRSA); GDAL does not read the endpoint
variables, so every process gridded starts translates them for `/vsis3/`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from functools import cache
from typing import TypeVar
from urllib.parse import urlparse

from ..errors import ConfigError, GriddedError, OutputError, SourceError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Every S3 call is retried here, not by botocore: botocore's standard mode stops retrying for
# the whole client once its retry quota (500 tokens, 5 a retry) has drained, which a long run under
# throttling does, and it never retries a body cut short. Bounded: at most S3_ATTEMPTS tries with
# exponential backoff and jitter, under half a minute for a key that keeps failing.
S3_ATTEMPTS = 8
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
# error codes S3 (and S3-compatible stores) answer when a request may succeed later
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "OperationAborted", "PriorRequestNotComplete",
})

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
    """A boto3 S3 client that does not retry (`with_retries` does), and for a non-AWS endpoint
    checksums only when required, which S3-compatible servers accept. One per configuration."""
    keys = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_DEFAULT_REGION")
    return _client(unsigned, tuple(os.environ.get(k) for k in keys))


@cache
def _client(unsigned: bool, _environment: tuple):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    options = {"retries": {"mode": "standard", "total_max_attempts": 1}, "connect_timeout": 10, "read_timeout": 60}
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


def http_status(err: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError, else None."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def is_transient(err: BaseException) -> bool:
    """Whether an S3 call's failure may go away: a 5xx or 429 answer or a throttling code, a
    connection refused, reset or cut short, a timeout. Decided by type and status, never by text."""
    from http.client import HTTPException

    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(err, ClientError):
        status = http_status(err) or 0
        return status >= 500 or status == 429 or err.response.get("Error", {}).get("Code") in TRANSIENT_CODES
    if isinstance(err, GriddedError):
        return err.retryable
    return isinstance(err, (ConnectionError, HTTPClientError, ReadTimeoutError, IncompleteReadError,
                            ResponseStreamingError, Urllib3Error, HTTPException, ConnectionResetError,
                            TimeoutError))


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1-based): exponential, capped, with jitter so that
    many workers throttled together do not come back together."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def with_retries(call: Callable[[], T], *, what: str, attempts: int = S3_ATTEMPTS) -> T:
    """`call()`, again after a transient failure (see is_transient), at most `attempts` times;
    each retry logged (at -v) with what was asked and the cause. The last failure is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as err:
            if attempt == attempts or not is_transient(err):
                raise
            delay = backoff_s(attempt)
            log.info("%s: %s, retry %d of %d in %.2f s", what, describe(err), attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def describe(err: BaseException) -> str:
    """A failure in a few words: the S3 error code and status, or the exception's type."""
    status = http_status(err)
    if status is not None:
        return f"{err.response.get('Error', {}).get('Code') or 'HTTP'} {status}"  # type: ignore[attr-defined]
    return err.__class__.__name__


def translate_error(err: Exception, uri: str, *, source: bool) -> GriddedError:
    """A botocore failure -> one line naming the URI and the likely fix (never credentials),
    retryable when the failure is transient."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    cls = SourceError if source else OutputError
    if isinstance(err, NoCredentialsError):
        return ConfigError(f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                           f"(or AWS_PROFILE), or pass --unsigned for a public source")
    if isinstance(err, EndpointConnectionError):
        return cls(f"{uri}: cannot reach the S3 endpoint ({err.kwargs.get('endpoint_url', '?')}) after "
                   f"{S3_ATTEMPTS} attempts; check AWS_ENDPOINT_URL, or retry later", retryable=True)
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = http_status(err)
        if code == "NoSuchBucket":
            return ConfigError(f"{uri}: bucket does not exist; check the bucket name (and AWS_ENDPOINT_URL)")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return ConfigError(f"{uri}: no such object; check the key")
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            return ConfigError(f"{uri}: access denied ({code or status}); check the credentials and the bucket policy")
        if is_transient(err):
            return cls(f"{uri}: S3 answered {code or status} {S3_ATTEMPTS} times; retry later", retryable=True)
        return cls(f"{uri}: S3 refused the request ({code or status}); check the endpoint and the request")
    if is_transient(err):
        return cls(f"{uri}: {describe(err)} {S3_ATTEMPTS} times; retry later", retryable=True)
    return cls(f"{uri}: {err.__class__.__name__}: {err}")
