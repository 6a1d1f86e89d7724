"""period.py: `--time` parsing, `last:PERIOD`, calendar-aligned period bins (expectations written out by hand)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridded.errors import ConfigError
from gridded.period import parse_as_of, parse_time, periods_for

UTC = UTC
US = timedelta(microseconds=1)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def end_of_day(y, m, d) -> datetime:
    return utc(y, m, d, 23, 59, 59, 999999)


# --- parse_time ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, start, end",
    [
        ("2024-01-01/2024-03-31", utc(2024, 1, 1), end_of_day(2024, 3, 31)),
        ("2024-01-01/2024-01-01", utc(2024, 1, 1), end_of_day(2024, 1, 1)),
        ("2024-02-29", utc(2024, 2, 29), end_of_day(2024, 2, 29)),
        ("2024", utc(2024, 1, 1), end_of_day(2024, 12, 31)),
        ("2024-02", utc(2024, 2, 1), end_of_day(2024, 2, 29)),
        ("2023-02", utc(2023, 2, 1), end_of_day(2023, 2, 28)),
        ("2023-12", utc(2023, 12, 1), end_of_day(2023, 12, 31)),
        ("2023/2024", utc(2023, 1, 1), end_of_day(2024, 12, 31)),
        ("2023-11/2024-02", utc(2023, 11, 1), end_of_day(2024, 2, 29)),
        ("2024-01-01T06:30:00Z/2024-01-02T12:00:00Z", utc(2024, 1, 1, 6, 30), utc(2024, 1, 2, 12)),
        ("2024-01-01T06:30:00/2024-01-02T12:00:00.5Z", utc(2024, 1, 1, 6, 30), utc(2024, 1, 2, 12, 0, 0, 500000)),
        (" 2024-01-01/2024-01-31 ", utc(2024, 1, 1), end_of_day(2024, 1, 31)),
    ],
)
def test_parse_time(text, start, end):
    time = parse_time(text)
    assert time.start == start
    assert time.end == end
    assert time.start.utcoffset() == timedelta(0) and time.end.utcoffset() == timedelta(0)


def test_datetime_with_offset_is_the_same_instant():
    time = parse_time("2024-01-01T10:00:00+10:00/2024-01-02T00:00:00-02:00")
    assert time.start == utc(2024, 1, 1, 0)
    assert time.end == utc(2024, 1, 2, 2)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("2024-03-01/2024-01-31", "start is after end"),
        ("2024-03/2024-01", "start is after end"),
        ("2024-01-02T00:00:00Z/2024-01-01T23:00:00Z", "start is after end"),
        ("../2024-01-31", "both ends"),
        ("2024-01-01/..", "both ends"),
        ("2024-01-01/", "both ends"),
        ("/2024-01-31", "both ends"),
        ("yesterday", "not an ISO 8601 date"),
        ("2024-13", "not an ISO 8601 date"),
        ("2024-02-30", "not an ISO 8601 date"),
        ("2024-1-1", "not an ISO 8601 date"),
        ("2024-01-01/tomorrow", "not an ISO 8601 date"),
        ("", "not an ISO 8601 date"),
        ("last:P1Q", "not an ISO 8601 period"),
    ],
)
def test_bad_time_is_config_error(text, problem):
    with pytest.raises(ConfigError, match=problem) as err:
        parse_time(text, as_of=utc(2024, 5, 1))
    assert "\n" not in str(err.value)


def test_basic_format_dates_are_inclusive_or_refused():
    try:
        time = parse_time("20240101/20240131")
    except ConfigError:
        return
    assert time.end == end_of_day(2024, 1, 31)


# --- last:PERIOD -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, as_of, start, end",
    [
        ("last:P1M", utc(2024, 3, 15, 12), utc(2024, 2, 1), end_of_day(2024, 2, 29)),
        ("last:P1M", utc(2024, 3, 1), utc(2024, 2, 1), end_of_day(2024, 2, 29)),
        ("last:P1M", utc(2024, 2, 29, 23, 59, 59), utc(2024, 1, 1), end_of_day(2024, 1, 31)),
        ("last:P1M", utc(2024, 1, 10), utc(2023, 12, 1), end_of_day(2023, 12, 31)),
        ("last:P3M", utc(2024, 5, 10), utc(2024, 1, 1), end_of_day(2024, 3, 31)),
        ("last:P3M", utc(2024, 4, 1), utc(2024, 1, 1), end_of_day(2024, 3, 31)),
        ("last:P3M", utc(2024, 3, 31, 23), utc(2023, 10, 1), end_of_day(2023, 12, 31)),
        ("last:P3M", utc(2024, 2, 1), utc(2023, 10, 1), end_of_day(2023, 12, 31)),
        ("last:P3M", utc(2024, 12, 31), utc(2024, 7, 1), end_of_day(2024, 9, 30)),
        ("last:P1Y", utc(2024, 3, 15), utc(2023, 1, 1), end_of_day(2023, 12, 31)),
    ],
)
def test_last_complete_period(spec, as_of, start, end):
    time = parse_time(spec, as_of=as_of)
    assert (time.start, time.end) == (start, end)


def test_last_month_defaults_to_now():
    before = datetime.now(UTC)
    time = parse_time("last:P1M")
    assert time.end < before
    assert time.end + US == before.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    assert time.start.day == 1 and time.start.hour == 0 and (time.start + timedelta(days=32)).month == before.month


def test_last_quarter_as_of_with_an_offset_is_complete_in_utc():
    as_of = parse_as_of("2024-04-01T05:00:00+10:00")  # 2024-03-31T19:00Z
    time = parse_time("last:P3M", as_of=as_of)
    assert time.end < as_of
    assert (time.start, time.end) == (utc(2023, 10, 1), end_of_day(2023, 12, 31))


@settings(max_examples=60, deadline=None)
@given(as_of=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
       period=st.sampled_from(["P1M", "P3M", "P1Y"]))
def test_last_complete_is_the_calendar_bin_before_as_of(as_of, period):
    time = parse_time(f"last:{period}", as_of=as_of)
    months = {"P1M": 1, "P3M": 3, "P1Y": 12}[period]
    assert time.end < as_of
    nxt = time.end + US  # the start of the bin holding as_of
    assert nxt <= as_of
    assert nxt.day == 1 and nxt.time() == datetime.min.time() and (nxt.month - 1) % months == 0
    assert time.start.day == 1 and time.start.time() == datetime.min.time() and (time.start.month - 1) % months == 0
    assert (nxt.year * 12 + nxt.month) - (time.start.year * 12 + time.start.month) == months
    # as_of lies in the bin that starts at nxt
    assert (as_of.year * 12 + as_of.month) - (nxt.year * 12 + nxt.month) < months


# --- periods_for -----------------------------------------------------------------------------


def bins(text, period):
    return [(p.label, p.start, p.end) for p in periods_for(parse_time(text), period)]


def test_monthly_bins_are_clipped_to_the_range():
    assert bins("2024-01-15/2024-03-10", "P1M") == [
        ("2024-01--P1M", utc(2024, 1, 15), end_of_day(2024, 1, 31)),
        ("2024-02--P1M", utc(2024, 2, 1), end_of_day(2024, 2, 29)),
        ("2024-03--P1M", utc(2024, 3, 1), end_of_day(2024, 3, 10)),
    ]


def test_monthly_bins_across_a_year_end():
    assert [label for label, _, _ in bins("2023-11-30/2024-01-01", "P1M")] == [
        "2023-11--P1M", "2023-12--P1M", "2024-01--P1M"]


def test_quarters_align_to_january_april_july_october():
    assert bins("2024-02-10/2024-08-31", "P3M") == [
        ("2024-01--P3M", utc(2024, 2, 10), end_of_day(2024, 3, 31)),
        ("2024-04--P3M", utc(2024, 4, 1), end_of_day(2024, 6, 30)),
        ("2024-07--P3M", utc(2024, 7, 1), end_of_day(2024, 8, 31)),
    ]
    assert [label for label, _, _ in bins("2023-12-31/2024-10-01", "P3M")] == [
        "2023-10--P3M", "2024-01--P3M", "2024-04--P3M", "2024-07--P3M", "2024-10--P3M"]


def test_annual_bins():
    assert bins("2023-06-01/2024-02-01", "P1Y") == [
        ("2023--P1Y", utc(2023, 6, 1), end_of_day(2023, 12, 31)),
        ("2024--P1Y", utc(2024, 1, 1), end_of_day(2024, 2, 1)),
    ]


def test_ten_day_bins_start_at_the_range_start():
    assert bins("2024-02-20/2024-03-12", "P10D") == [
        ("2024-02-20--P10D", utc(2024, 2, 20), end_of_day(2024, 2, 29)),
        ("2024-03-01--P10D", utc(2024, 3, 1), end_of_day(2024, 3, 10)),
        ("2024-03-11--P10D", utc(2024, 3, 11), end_of_day(2024, 3, 12)),
    ]


def test_a_range_inside_one_bin_is_one_clipped_bin():
    start, end = utc(2024, 5, 3, 6), utc(2024, 5, 4, 18)
    periods = periods_for(parse_time("2024-05-03T06:00:00Z/2024-05-04T18:00:00Z"), "P3M")
    assert [(p.label, p.start, p.end) for p in periods] == [("2024-04--P3M", start, end)]


def test_bins_of_a_range_given_with_an_offset():
    periods = periods_for(parse_time("2024-01-31T20:00:00-10:00/2024-02-10"), "P1M")  # starts 2024-02-01T06:00Z
    assert all(p.start <= p.end for p in periods)
    assert [(p.label, p.start, p.end) for p in periods] == [
        ("2024-02--P1M", utc(2024, 2, 1, 6), end_of_day(2024, 2, 10))]


@settings(max_examples=60, deadline=None)
@given(
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=800)),
    period=st.sampled_from(["P1M", "P2M", "P3M", "P6M", "P1Y", "P1D", "P10D"]),
)
def test_bins_tile_the_range_without_gaps(start, length, period):
    time = parse_time(f"{start.isoformat()}/{(start + length).isoformat()}")
    periods = periods_for(time, period)
    assert periods[0].start == time.start and periods[-1].end == time.end
    for p in periods:
        assert p.start <= p.end
    for a, b in pairwise(periods):
        assert b.start == a.end + US
    assert len({p.label for p in periods}) == len(periods)
    if period[-1] == "M":
        n = int(period[1:-1])
        for p in periods[1:]:
            assert p.start.day == 1 and p.start.time() == datetime.min.time() and (p.start.month - 1) % n == 0


@pytest.mark.parametrize("period", ["", "1M", "P", "PM", "P0M", "P5M", "P7M", "P1W", "p1m", "P1.5M", "P1MT", "P-1M",
                                    "month"])
def test_bad_period_is_config_error(period):
    time = parse_time("2024-01-01/2024-03-31")
    with pytest.raises(ConfigError, match=r"^--period .*(not an ISO 8601 period|months must divide)"):
        periods_for(time, period)
    with pytest.raises(ConfigError, match=r"^--time last:.*(not an ISO 8601 period|months must divide)"):
        parse_time(f"last:{period}", as_of=utc(2024, 5, 1))
