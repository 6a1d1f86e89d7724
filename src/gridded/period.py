"""`--time` (ISO intervals, `last:P1M`) -> a TimeRange; a period (`P1M`) -> calendar-aligned bins."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ._pickling import by_fields
from .errors import ConfigError

PERIOD = re.compile(r"^P(?P<n>[1-9]\d*)(?P<unit>[YMD])$")
EPS = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeRange:
    """A closed UTC interval [start, end]."""

    start: datetime
    end: datetime

    def __post_init__(self):
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ConfigError("time range bounds must be timezone-aware (UTC)")
        if self.start > self.end:
            raise ConfigError(f"--time {self.start:%Y-%m-%d}/{self.end:%Y-%m-%d}: start is after end; swap them")


@by_fields
@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    """One time bin: [start, end] in UTC, and its label (`2024-01--P1M`)."""

    start: datetime
    end: datetime
    label: str


def _parse_bound(text: str, *, end: bool, flag: str) -> datetime:
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}", text):
            start = datetime(int(text), 1, 1, tzinfo=UTC)
            return _add(start, 1, "Y") - EPS if end else start
        if re.fullmatch(r"\d{4}-\d{2}", text):
            y, m = map(int, text.split("-"))
            start = datetime(y, m, 1, tzinfo=UTC)
            return _add(start, 1, "M") - EPS if end else start
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            start = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
            return start + timedelta(days=1) - EPS if end else start
        if re.fullmatch(r"\d{8}", text):  # basic format: a whole day, as YYYY-MM-DD
            return _parse_bound(f"{text[:4]}-{text[4:6]}-{text[6:]}", end=end, flag=flag)
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        example = "2024-04-01T00:00:00Z" if flag == "--as-of" else "2024-01-01/2024-03-31"
        raise ConfigError(f"{flag} {text!r}: not an ISO 8601 date; use e.g. {example}") from err
    # periods are UTC calendar bins: an offset is converted, not kept
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def parse_time(text: str, *, as_of: datetime | None = None) -> TimeRange:
    """`START/END` (dates inclusive), `YYYY`, `YYYY-MM`, or `last:P1M` relative to as_of (default now)."""
    text = text.strip()
    if text.startswith("last:"):
        return last_complete(text[5:], as_of or datetime.now(UTC))
    if "/" in text:
        first, _, last = text.partition("/")
        if not first or not last or ".." in (first, last):
            raise ConfigError(f"--time {text}: both ends are needed; use START/END, e.g. 2024-01-01/2024-03-31")
        start, end = _parse_bound(first, end=False, flag="--time"), _parse_bound(last, end=True, flag="--time")
    else:
        start, end = _parse_bound(text, end=False, flag="--time"), _parse_bound(text, end=True, flag="--time")
    if start > end:
        raise ConfigError(f"--time {text}: start is after end; use START/END with START first")
    return TimeRange(start=start, end=end)


def parse_as_of(text: str | None) -> datetime | None:
    return None if text is None else _parse_bound(text, end=False, flag="--as-of")


def _add(when: datetime, n: int, unit: str) -> datetime:
    if unit == "D":
        return when + timedelta(days=n)
    months = when.month - 1 + (n * 12 if unit == "Y" else n)
    return when.replace(year=when.year + months // 12, month=months % 12 + 1, day=1)


def _bin_start(when: datetime, n: int, unit: str, anchor: datetime) -> datetime:
    if unit == "Y":
        return datetime(when.year - (when.year % n if n > 1 else 0), 1, 1, tzinfo=UTC)
    if unit == "M":
        index = (when.month - 1) // n * n
        return datetime(when.year, index + 1, 1, tzinfo=UTC)
    days = (when - anchor).days // n * n
    return anchor + timedelta(days=days)


def split_period(period: str, flag: str = "--period") -> tuple[int, str]:
    m = PERIOD.match(period)
    if not m:
        raise ConfigError(f"{flag}{'' if flag.endswith(':') else ' '}{period}: not an ISO 8601 period; "
                          f"use P1M, P3M, P1Y or P10D")
    n, unit = int(m["n"]), m["unit"]
    if unit == "M" and 12 % n:
        raise ConfigError(f"{flag}{'' if flag.endswith(':') else ' '}{period}: months must divide a year to stay "
                          f"calendar-aligned; use P1M, P2M, P3M, P4M, P6M or P12M")
    return n, unit


def label(start: datetime, period: str) -> str:
    n, unit = split_period(period)
    stamp = {"Y": "%Y", "M": "%Y-%m", "D": "%Y-%m-%d"}[unit]
    return f"{start.strftime(stamp)}--{period}"


def periods_for(time: TimeRange, period: str) -> list[Period]:
    """The calendar bins of `period` that meet the time range, each clipped to it."""
    n, unit = split_period(period)
    anchor = datetime.combine(time.start.date(), datetime.min.time(), UTC)
    start = _bin_start(time.start, n, unit, anchor)
    bins = []
    while start <= time.end:
        nxt = _add(start, n, unit)
        bins.append(Period(start=max(start, time.start), end=min(nxt - EPS, time.end), label=label(start, period)))
        start = nxt
    return bins


def last_complete(period: str, as_of: datetime) -> TimeRange:
    """The last complete calendar bin of `period` before as_of: `P1M` last month, `P3M` last quarter."""
    n, unit = split_period(period, flag="--time last:")
    if unit == "D":
        end = datetime.combine(as_of.date(), datetime.min.time(), UTC)
        return TimeRange(start=end - timedelta(days=n), end=end - EPS)
    as_of = as_of.astimezone(UTC) if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    current = _bin_start(as_of, n, unit, as_of)
    previous = _add(current, -n, unit)
    return TimeRange(start=previous, end=current - EPS)
