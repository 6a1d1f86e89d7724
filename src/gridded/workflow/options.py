"""How and where a workflow runs (WorkflowOptions), checked before anything is rendered
(Kubernetes names, quantities and labels, the image's pinned version, the cron schedule, the S3
locations and the index DSN: each failure one line naming the flag and the fix), and free text
made into valid Kubernetes names and label values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from .. import __version__
from ..errors import ConfigError

STYLES = ("dag", "steps")
KINDS = ("workflow", "template")
INDEX_SECRET_KEY = "dsn"  # key of the DSN inside options.index_secret
INDEX_DSN_ENV = "GRIDDED_INDEX_DSN"  # how a pod gets that DSN: from the Secret, never in argv or the manifest
# Argo keeps every node of a workflow in its one object (etcd's limit: 1.5 MB, compressed above 1 MB):
# above this many batches the fan-out is split into child workflows
MAX_BATCHES_PER_WORKFLOW = 5000
MAX_NAME_LEN = 52  # CronWorkflow names get a timestamp suffix; 52 leaves room (Argo's own limit)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IMAGE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_FIELDS = (  # name, low, high, names (index = value)
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("", "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowOptions:
    """How and where a workflow runs: the Argo side of `gridded workflow render`."""

    image: str
    output: str | None = None          # s3:// root; required by render(), unused by render_ingest()
    style: str = "dag"
    kind: str = "workflow"
    schedule: str | None = None        # cron: renders a CronWorkflow
    timezone: str = "UTC"              # of the schedule
    name: str | None = None            # default: gridded-<pipeline>
    namespace: str | None = None
    service_account: str | None = None
    parallelism: int = 10
    s3_secret: str | None = None       # Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
    aws_endpoint_url: str | None = None
    index_secret: str | None = None    # Secret whose key `dsn` holds the index DSN (ingest, or planning from it)
    unsigned: bool = False             # read s3:// sources unsigned (public buckets)
    requester_pays: bool = False       # read requester-pays s3:// sources
    cpu: str = "2"
    memory: str = "8Gi"
    retries: int = 2
    deadline_s: int = 6 * 3600
    owner: str | None = None
    artifact_bucket: str | None = None  # default: the output's bucket
    artifact_prefix: str | None = None  # default: <output prefix>/_workflows
    version: str = __version__          # the gridded/version label
    on_bad_source: str = "fail"         # fail, or skip: tiles process leaves unreadable sources out
    max_batches_per_workflow: int = MAX_BATCHES_PER_WORKFLOW  # above: child workflows of this many batches

    def __post_init__(self):
        check_choice("--style", self.style, STYLES)
        check_choice("--kind", self.kind, KINDS)
        check_choice("--on-bad-source", self.on_bad_source, ("fail", "skip"))
        check_image(self.image)
        if self.schedule is not None:
            check_cron(self.schedule)
            if self.kind == "template":
                raise ConfigError("--kind template with --schedule: pick one (a CronWorkflow or a WorkflowTemplate)")
        check_cluster_values(self)
        check_s3_values(self)

    def cells_key(self) -> tuple[str, str]:
        """(bucket, key) of the cells artifact; the key holds {{workflow.uid}}, so runs never collide."""
        out = urlsplit(self.output or "")
        bucket = self.artifact_bucket or out.netloc
        if self.artifact_prefix is not None:
            prefix = self.artifact_prefix
        else:
            prefix = "/".join(p for p in (out.path.strip("/"), "_workflows") if p)
        return bucket, "/".join(p for p in (prefix, "{{workflow.uid}}", "cells.pickle") if p)

    def cells_uri(self) -> str:
        """The cells artifact as the pods name it: generate writes it there, each process pod reads its batch."""
        return "s3://{}/{}".format(*self.cells_key())


def check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} {value}: choose one of {', '.join(choices)}")


def check_cluster_values(o: WorkflowOptions) -> None:
    """Kubernetes names, counts and quantities."""
    if o.name is not None and (len(o.name) > MAX_NAME_LEN or not _DNS_SUBDOMAIN.match(o.name)):
        raise ConfigError(f"--name {o.name}: use lower-case letters, digits and '-', at most {MAX_NAME_LEN} "
                          f"characters, e.g. --name gridded-s2-monthly")
    if o.namespace is not None and not _DNS_LABEL.match(o.namespace):
        raise ConfigError(f"--namespace {o.namespace}: not a Kubernetes namespace; use e.g. --namespace argo")
    for flag, value in (("--service-account", o.service_account), ("--s3-secret", o.s3_secret),
                        ("--index-secret", o.index_secret)):
        if value is not None and not _DNS_SUBDOMAIN.match(value):
            raise ConfigError(f"{flag} {value}: not a Kubernetes name; use lower-case letters, digits, '-' and '.'")
    if o.parallelism < 1:
        raise ConfigError(f"--parallelism {o.parallelism}: must be at least 1; e.g. --parallelism 10")
    if o.max_batches_per_workflow < 1:
        raise ConfigError(f"--max-batches-per-workflow {o.max_batches_per_workflow}: must be at least 1; "
                          f"e.g. --max-batches-per-workflow {MAX_BATCHES_PER_WORKFLOW}")
    if o.retries < 0:
        raise ConfigError(f"--retries {o.retries}: must be 0 or more; e.g. --retries 2")
    if o.deadline_s < 1:
        raise ConfigError(f"--deadline {o.deadline_s}: must be at least 1 second; e.g. --deadline 21600")
    for flag, value in (("--cpu", o.cpu), ("--memory", o.memory)):
        if not _QUANTITY.match(value) or not re.search(r"[1-9]", value):
            raise ConfigError(f"{flag} {value}: not a positive Kubernetes quantity; use e.g. --cpu 2 --memory 8Gi")
    if o.owner is not None and (not o.owner or len(o.owner) > 63 or not _LABEL_VALUE.match(o.owner)):
        raise ConfigError(f"--owner {o.owner}: a label value is at most 63 letters, digits, '-', '_' or '.'")


def check_s3_values(o: WorkflowOptions) -> None:
    """The output, the endpoint and the cells artifact's location."""
    if o.output is not None:
        out = urlsplit(o.output)
        if out.scheme != "s3":
            raise ConfigError(f"--output {o.output}: pods cannot share a local disk; use an s3:// output, "
                              f"e.g. --output s3://bucket/composites")
        if not out.netloc:
            raise ConfigError(f"--output {o.output}: no bucket; use s3://BUCKET/PREFIX")
    if o.aws_endpoint_url is not None:
        parts = urlsplit(o.aws_endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--aws-endpoint-url {o.aws_endpoint_url}: use http(s)://HOST[:PORT]")
    if o.artifact_bucket is not None and not _DNS_SUBDOMAIN.match(o.artifact_bucket):
        raise ConfigError(f"--artifact-bucket {o.artifact_bucket}: a bucket name, without s3:// or a prefix")
    if o.artifact_prefix is not None and (o.artifact_prefix.startswith("/") or o.artifact_prefix.endswith("/")):
        raise ConfigError(f"--artifact-prefix {o.artifact_prefix}: drop the leading and trailing '/'")


def check_image(image: str) -> None:
    """An image must name its version: a tag other than latest, or a digest."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    repo, _, tag = last.partition(":")
    fix = "pin a version, e.g. --image ghcr.io/org/gridded:0.1.0 (or @sha256:DIGEST)"
    if digest:
        if not _IMAGE_DIGEST.match(digest) or not repo:
            raise ConfigError(f"--image {image}: bad digest; {fix}")
        return
    if not repo or not tag:
        raise ConfigError(f"--image {image}: no tag, so pods may run different code; {fix}")
    if not _IMAGE_TAG.match(tag) or tag == "latest":
        raise ConfigError(f"--image {image}: tag {tag!r} does not pin a version; {fix}")


def check_cron(expr: str) -> None:
    """Five fields of digits, names (MON, JAN), '*', ',', '-', '/'; or a macro such as @monthly."""
    fix = "use five fields MIN HOUR DOM MON DOW, e.g. --schedule '0 3 1 * *' (03:00 on the 1st)"
    if expr.strip() in _CRON_MACROS:
        return
    fields = expr.split()
    if len(fields) != 5:
        raise ConfigError(f"--schedule {expr!r}: {len(fields)} fields, not 5; {fix}")
    for text, (what, low, high, names) in zip(fields, _CRON_FIELDS):
        for part in text.split(","):
            if not _cron_part_ok(part.upper(), low, high, names):
                raise ConfigError(f"--schedule {expr!r}: bad {what} field {text!r}; {fix}")


def _cron_part_ok(part: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    span, slash, step = part.partition("/")
    if slash and not (step.isdigit() and int(step) >= 1):
        return False
    if span in ("*", "?"):
        return True
    first, dash, last = span.partition("-")
    ends = [_cron_value(first, names), _cron_value(last, names) if dash else None]
    if ends[0] is None or (dash and ends[1] is None):
        return False
    return all(low <= v <= high for v in ends if v is not None) and (not dash or ends[0] <= ends[1])


def _cron_value(text: str, names: tuple[str, ...]) -> int | None:
    if text.isdigit():
        return int(text)
    return names.index(text) if text and text in names else None


def check_index_dsn(dsn: str, *, inline: bool = True) -> None:
    """A PostgreSQL DSN, without a password when `inline` (the manifest is stored and shown in the Argo UI).
    Messages never echo a DSN that may hold a password."""
    if inline and has_password(dsn):
        raise ConfigError(f"--index {dsn_for_messages(dsn)}: the DSN holds a password, which the workflow would "
                          f"store; put the DSN in a Secret (key '{INDEX_SECRET_KEY}') and pass --index-secret NAME")
    if _scheme(dsn) not in ("postgresql", "postgres"):
        # a pod's disk is gone when it ends (no SQLite), and the index takes URLs, not key=value DSNs
        raise ConfigError(f"--index {dsn_for_messages(dsn) or repr(dsn)}: not a PostgreSQL URL, which a workflow's "
                          f"pods need; use e.g. postgresql://gridded@db:5432/stac")


def has_password(dsn: str) -> bool:
    """A password in a URL DSN (user:pw@host) or a key-value one (password=...)."""
    try:
        in_url = bool(urlsplit(dsn).password)
    except ValueError:  # a port that is not a number: say it holds one rather than echo it
        in_url = True
    return in_url or bool(re.search(r"password\s*=", dsn, re.IGNORECASE))


def dsn_for_messages(dsn: str) -> str:
    """A DSN fit for a message: itself without a password, else its scheme and host only."""
    if not has_password(dsn):
        return dsn
    try:
        parts = urlsplit(dsn)
        host = parts.hostname
    except ValueError:
        return "(a DSN with a password)"
    return f"{parts.scheme}://{host}/..." if parts.scheme and host else "(a DSN with a password)"


def _scheme(dsn: str) -> str:
    try:
        return urlsplit(dsn).scheme
    except ValueError:
        return ""


def label_value(text: str) -> str:
    """Any text -> a valid Kubernetes label value (at most 63 characters of [A-Za-z0-9-_.])."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def dns_name(text: str) -> str:
    value = re.sub(r"[^a-z0-9-]+", "-", text.lower())[:MAX_NAME_LEN]
    return value.strip("-") or "gridded"
