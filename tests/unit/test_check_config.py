"""`check-config` shows what each schedule means before it is deployed: its next fire times."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from etcd_backupd.commands.check_config import describe_config
from etcd_backupd.config import parse_config
from tests.harness.cli import run_cli


def test_next_three_fire_times_of_every_schedule() -> None:
    config = parse_config(
        {
            "schedule": {"cron": ["0 3 * * 1", "@monthly"], "timezone": "Europe/Berlin"},
            "destination": [
                {"name": "disk", "type": "local", "path": "/x"},
                {"name": "s3", "type": "s3", "bucket": "bkt", "cron": "0 0 1,15 * fri"},
            ],
            "drill": {"enabled": True},
        }
    )
    lines = describe_config(config, datetime(2026, 11, 28, 12, tzinfo=UTC))
    assert lines[1:] == [
        "schedule: 0 3 * * 1, @monthly (Europe/Berlin)",
        "  next: 2026-11-30T03:00:00+01:00, 2026-12-01T00:00:00+01:00, 2026-12-07T03:00:00+01:00",
        "destination disk: local /x (compression none)",
        "destination s3: s3 s3://bkt/ (compression none)",
        "  own schedule: 0 0 1,15 * fri (Europe/Berlin)",
        "    next: 2026-12-01T00:00:00+01:00, 2026-12-04T00:00:00+01:00, 2026-12-11T00:00:00+01:00",
        "drill: 0 3 * * 0 (Europe/Berlin)",
        "  next: 2026-11-29T03:00:00+01:00, 2026-12-06T03:00:00+01:00, 2026-12-13T03:00:00+01:00",
    ]


def test_check_config_prints_fire_times_with_their_offset(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[schedule]\ncron = '@daily'\ntimezone = 'Asia/Kolkata'\n"
        "[[destination]]\nname = 'local'\ntype = 'local'\npath = '/x'\n"
    )
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    midnight = r"\d{4}-\d\d-\d\dT00:00:00\+05:30"
    assert re.search(rf"^    next: {midnight}, {midnight}, {midnight}$", result.stdout, re.M)
    assert "drill (disabled): 0 3 * * 0 (Asia/Kolkata)" in result.stdout
