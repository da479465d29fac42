"""Help-desk hours from the region profile, with Japanese public holidays (jpholiday)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import jpholiday

from bot.knowledge import Region

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES: dict[str, tuple[str, ...]] = {
    "ja": ("月曜日", "火曜日", "水曜日", "木曜日", "金曜日", "土曜日", "日曜日"),
    "ja-easy": ("月曜日(げつようび)", "火曜日(かようび)", "水曜日(すいようび)", "木曜日(もくようび)",
                "金曜日(きんようび)", "土曜日(どようび)", "日曜日(にちようび)"),
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "zh": ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"),
    "vi": ("Thứ Hai", "Thứ Ba", "Thứ Tư", "Thứ Năm", "Thứ Sáu", "Thứ Bảy", "Chủ Nhật"),
    "ko": ("월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일"),
    "pt": ("segunda-feira", "terça-feira", "quarta-feira", "quinta-feira", "sexta-feira", "sábado", "domingo"),
    "ne": ("सोमबार", "मंगलबार", "बुधबार", "बिहीबार", "शुक्रबार", "शनिबार", "आइतबार"),
    "tl": ("Lunes", "Martes", "Miyerkules", "Huwebes", "Biyernes", "Sabado", "Linggo"),
    "id": ("Senin", "Selasa", "Rabu", "Kamis", "Jumat", "Sabtu", "Minggu"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
}


class OfficeHours:
    def __init__(self, region: Region) -> None:
        hours = region.helpdesk
        self.zone = ZoneInfo(region.timezone)
        self.days = {_DAYS.index(day) for day in hours.get("weekdays", _DAYS[:5])}
        self.open = dt.time.fromisoformat(str(hours.get("open", "09:00")))
        self.close = dt.time.fromisoformat(str(hours.get("close", "17:00")))
        self.closed_dates = set(hours.get("closed_dates", ()))
        self.public_holidays = hours.get("public_holidays") == "jp"

    def _working_day(self, day: dt.date) -> bool:
        if day.weekday() not in self.days or day.strftime("%m-%d") in self.closed_dates:
            return False
        return not (self.public_holidays and jpholiday.is_holiday(day))

    def is_open(self, now: dt.datetime) -> bool:
        local = now.astimezone(self.zone)
        return self._working_day(local.date()) and self.open <= local.time() < self.close

    def next_open(self, now: dt.datetime) -> dt.datetime:
        """The next moment staff start work (``now`` itself if open)."""
        local = now.astimezone(self.zone)
        if self.is_open(local):
            return local
        day = local.date()
        if local.time() >= self.open:
            day += dt.timedelta(days=1)
        for _ in range(40):
            if self._working_day(day):
                return dt.datetime.combine(day, self.open, self.zone)
            day += dt.timedelta(days=1)
        raise ValueError("no working day in the next 40 days")

    def describe_next_open(self, now: dt.datetime, language: str) -> str:
        start = self.next_open(now)
        names = WEEKDAY_NAMES.get(language, WEEKDAY_NAMES["en"])
        return f"{names[start.weekday()]} {start.month}/{start.day} {start.strftime('%H:%M').lstrip('0')}"
