from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from bot.knowledge import KnowledgeBase
from bot.office_hours import OfficeHours

JST = ZoneInfo("Asia/Tokyo")


def test_weekday_office_hours(kb: KnowledgeBase) -> None:
    hours = OfficeHours(kb.region)
    assert hours.is_open(dt.datetime(2026, 11, 25, 10, 0, tzinfo=JST))  # Wednesday
    assert not hours.is_open(dt.datetime(2026, 11, 25, 2, 0, tzinfo=JST))
    assert not hours.is_open(dt.datetime(2026, 11, 28, 10, 0, tzinfo=JST))  # Saturday


def test_night_before_a_public_holiday_points_past_it(kb: KnowledgeBase) -> None:
    hours = OfficeHours(kb.region)
    # Sunday 22 November 2026, 2 a.m.; Monday 23 November is Labour Thanksgiving Day.
    now = dt.datetime(2026, 11, 22, 2, 0, tzinfo=JST)
    assert hours.next_open(now) == dt.datetime(2026, 11, 24, 9, 0, tzinfo=JST)
    assert hours.describe_next_open(now, "en") == "Tuesday 11/24 9:00"


def test_new_year_closure(kb: KnowledgeBase) -> None:
    hours = OfficeHours(kb.region)
    assert hours.next_open(dt.datetime(2026, 12, 28, 18, 0, tzinfo=JST)).date() == dt.date(2027, 1, 4)
