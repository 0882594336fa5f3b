"""The last line a failing command prints: one line, and one JSON object with --log-format json."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.exceptions import ParamValidationError

from etcd_backupd.cli import main
from etcd_backupd.config import parse_config
from etcd_backupd.config_destinations import S3Destination
from etcd_backupd.destinations.s3 import S3Bucket
from etcd_backupd.logs import error_line


def test_the_final_error_is_a_json_object_with_json_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["--log-format", "json", "check-config", "--config", str(missing)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["message"] == f"etcd-backupd: {missing}: no such config file"
    assert datetime.fromisoformat(entry["time"]).tzinfo is not None
    assert main(["check-config", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"etcd-backupd: {missing}: no such config file\n"


def test_verify_of_an_invalid_file_logs_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.db"
    bad.write_text("hello\n")
    assert main(["--log-format", "json", "verify", str(bad)]) == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"].startswith(f"INVALID {bad}: not an etcd snapshot")


def test_error_lines_are_one_line() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert error_line("text", "a\nb", now) == "a b"
    assert json.loads(error_line("json", "a\nb", now))["message"] == "a b"


def test_a_multi_line_s3_client_error_reads_as_one_line() -> None:
    settings = parse_config(
        {"destination": [{"name": "s3", "type": "s3", "bucket": "bucket-1"}]}
    ).destination[0]
    assert isinstance(settings, S3Destination)
    bucket = S3Bucket(settings)
    report = 'Invalid bucket name "x":\nBucket name must match the regex "^[a-z]$"'
    message = str(bucket.error("list objects", ParamValidationError(report=report)))
    assert "\n" not in message
    assert message.endswith('Invalid bucket name "x": Bucket name must match the regex "^[a-z]$"')
