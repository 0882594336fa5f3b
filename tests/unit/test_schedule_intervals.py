"""The schedule's longest wait between fire times, which the stale alerts scale with."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from etcd_backupd.config import parse_config
from etcd_backupd.scheduler import Schedule

NOW = datetime(2026, 11, 24, 12, 0, 7, tzinfo=UTC)


def intervals(schedule: str, **destination: str) -> tuple[float, dict[str, float]]:
    config = parse_config(
        {
            "schedule": {"cron": schedule},
            "destination": [
                {"name": "disk", "type": "local", "path": "/x", **destination},
                {"name": "nfs", "type": "local", "path": "/y"},
            ],
        }
    )
    return Schedule.of(config).intervals(NOW)


@pytest.mark.parametrize(
    ("cron", "seconds"),
    [
        ("0 */12 * * *", 12 * 3600),
        ("0 * * * *", 3600),
        ("*/5 * * * *", 300),
        # four weekdays follow one another; the longest wait spans the weekend
        ("0 9 * * 1-5", 72 * 3600),
        ("0 3 1 * *", 31 * 86400),
    ],
)
def test_the_longest_gap_between_fire_times(cron: str, seconds: float) -> None:
    assert intervals(cron) == (seconds, {"disk": seconds, "nfs": seconds})


def test_a_destination_on_its_own_schedule_gets_its_own_interval() -> None:
    overall, each = intervals("0 * * * *", cron="30 2 * * *")
    assert each == {"disk": 86400, "nfs": 3600}
    # the newest backup anywhere is at most an hour old
    assert overall == 3600
