"""How sources are reached, as a value the plan carries to its workers: S3 unsigned or
requester-pays, and hrefs signed at read time (Planetary Computer's SAS tokens). Exported to the
process environment only while a plan is made or a batch runs, for boto3, GDAL and the processes
they start; never written into items, the cells artifact, reports or workflows (a signed href is a
credential)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from ..errors import ConfigError, SourceError
from .s3 import REQUESTER_PAYS_ENV, UNSIGNED_ENV

SIGNERS = ("planetary-computer",)
TOKEN_ATTEMPTS = 3  # the SDK's default is 10 retries over ~7 minutes: a pod should fail sooner
QUERY = re.compile(r"(https?://[^\s'\"?]+)\?[^\s'\"]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceAccess:
    unsigned: bool = False  # read s3:// sources without signing requests (public buckets)
    requester_pays: bool = False  # read requester-pays s3:// sources
    sign: str | None = None  # sign asset hrefs when read: "planetary-computer"

    def __post_init__(self):
        if self.sign is not None and self.sign not in SIGNERS:
            raise ConfigError(f"--sign {self.sign}: unknown signer; use {', '.join(SIGNERS)}")

    def environment(self) -> dict[str, str]:
        """What GDAL and boto3 read of this (they read the environment, not values)."""
        env = {}
        if self.unsigned:
            env[UNSIGNED_ENV] = "YES"
        if self.requester_pays:
            env[REQUESTER_PAYS_ENV] = "requester"
        return env

    @contextmanager
    def exported(self) -> Iterator[None]:
        """Within the block, this process (and what it starts) reads sources this way."""
        global _SIGNER
        saved = {k: os.environ.get(k) for k in self.environment()}
        os.environ.update(self.environment())
        previous, _SIGNER = _SIGNER, make_signer(self.sign)
        try:
            yield
        finally:
            _SIGNER = previous
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def from_environment() -> SourceAccess:
    """The access an environment already asks for (AWS_NO_SIGN_REQUEST, AWS_REQUEST_PAYER)."""
    from .s3 import requester_pays, unsigned_requested

    return SourceAccess(unsigned=unsigned_requested(), requester_pays=requester_pays())


def redact(text: str) -> str:
    """A message with the query of every URL in it left out: a signed href's query is its token."""
    return QUERY.sub(r"\1", text)


class PlanetaryComputerSigner:
    """Signs Azure Blob Storage hrefs with a SAS token from the Planetary Computer's token endpoint
    (`PC_SDK_SAS_URL`, and `PC_SDK_SUBSCRIPTION_KEY` if set), tokens cached by the SDK until a
    minute before they expire; `refresh=` the signed href a read was refused with gets a new token
    unless another thread already has (reads of a batch refused together get one token between them)."""

    def __init__(self):
        try:
            import planetary_computer.sas as sas
        except ImportError as err:
            raise ConfigError("--sign planetary-computer needs the planetary-computer package; "
                              "pip install 'gridded[planetary-computer]'") from err
        self.sas = sas
        self.lock = threading.Lock()

    def __call__(self, href: str, *, refresh: str | None = None) -> str:
        parsed = urlparse(href)
        if not parsed.netloc.endswith(".blob.core.windows.net") or "sig=" in parsed.query:
            return href
        account = parsed.netloc.split(".", 1)[0]
        container = parsed.path.lstrip("/").split("/", 1)[0]
        settings = self.sas.Settings.get()
        url = f"{settings.sas_url}/{account}/{container}"
        with self.lock:
            cached = self.sas.TOKEN_CACHE.get(url)
            if refresh is not None and cached is not None and refresh.endswith("?" + cached.token):
                del self.sas.TOKEN_CACHE[url]  # the token refused is still the cached one: a new one
            try:
                token = self.sas.get_token(account, container, retry_total=TOKEN_ATTEMPTS, retry_backoff_factor=0.2)
            except Exception as err:  # requests' HTTPError and RetryError, urllib3's: one line for them all
                status = getattr(getattr(err, "response", None), "status_code", None)
                if status in (401, 403, 404):
                    raise ConfigError(f"the Planetary Computer token endpoint {settings.sas_url} refused a token for "
                                      f"{account}/{container} ({status}); set PC_SDK_SUBSCRIPTION_KEY (or "
                                      f"PC_SDK_SAS_URL for another endpoint)") from err
                raise SourceError(f"the Planetary Computer token endpoint {settings.sas_url} gave no token for "
                                  f"{account}/{container} ({err.__class__.__name__}); retry later",
                                  retryable=True) from err
        return token.sign(href).href


_SIGNER = None


def make_signer(name: str | None):
    if name is None:
        return None
    return PlanetaryComputerSigner()


def signer():
    """The signer of the plan or batch running in this process, if any."""
    return _SIGNER
