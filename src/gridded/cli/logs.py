"""Logging on stderr for the command line: levels from -v/-q, quiet third-party loggers, and every
secret the environment holds replaced before a record is written."""

from __future__ import annotations

import logging
import os
import re
import sys

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "GRIDDED_INDEX_DSN")
DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def redact(text: str) -> str:
    """`text` with every secret the environment holds, and DSN passwords, replaced by ***."""
    redacted = DSN_PASSWORD.sub(r"\1***@", text)
    for secret in (os.environ[k] for k in SECRET_ENV if len(os.environ.get(k, "")) >= 4):
        redacted = redacted.replace(secret, "***")
    return redacted


def command_line() -> list[str]:
    """This process's command line as a report may record it: secrets redacted, `gridded` first."""
    return ["gridded", *(redact(arg) for arg in sys.argv[1:])]


class RedactSecrets(logging.Filter):
    """Debug logs of boto3 and friends may echo a key id or a DSN: replace every secret the
    environment holds (and DSN passwords) before a record is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def configure_logging(verbose: int, quiet: bool) -> None:
    """-q: errors only; default warnings; -v info; -vv debug, third-party loggers included."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
    for chatty in ("botocore", "boto3", "s3transfer"):
        logging.getLogger(chatty).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
    # dask reads this when first imported (here and in spawned workers): keep its INFO chatter off
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning" if verbose < 2 else "debug")
    for noisy in ("distributed", "rasterio", "numba", "asyncio", "tornado"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING) if verbose < 2 else level)
    # its connection retries are ours to report, once, as the error they end in
    logging.getLogger("urllib3").setLevel(logging.ERROR if verbose < 2 else level)
