"""What an operator sees when the config is right, and when it is wrong."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from etcd_backupd.config import (
    DEFAULT_CRON,
    ENV_ETCD_PASSWORD,
    Config,
    DrillConfig,
    EtcdConfig,
    LocalDestination,
    MetricsConfig,
    RestoreConfig,
    RetentionConfig,
    S3Destination,
    ScheduleConfig,
    load_config,
    parse_config,
    validate_cron,
)
from etcd_backupd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"destination": [{"name": "local", "type": "local", "path": "/var/backups/etcd"}]}


def error_of(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


def test_minimal_config_takes_documented_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.schedule.cron == DEFAULT_CRON == "0 */12 * * *"
    assert config.schedule.timezone == "UTC"
    assert config.etcd.endpoints == ["http://127.0.0.1:2379"]
    assert config.state_dir == Path("/var/lib/etcd-backupd")


def test_example_config_is_valid_and_documents_every_option() -> None:
    text = (REPO / "config.example.toml").read_text()
    config = parse_config(tomllib.loads(text))
    assert config.retention.keep_last is None
    models: list[type[BaseModel]] = [
        Config,
        EtcdConfig,
        ScheduleConfig,
        RetentionConfig,
        LocalDestination,
        S3Destination,
        MetricsConfig,
        DrillConfig,
        RestoreConfig,
    ]
    for model in models:
        for field in model.model_fields:
            if field in (
                "etcd",
                "schedule",
                "destination",
                "retention",
                "type",
                "name",
                "metrics",
                "drill",
                "restore",
            ):
                continue
            assert re.search(rf"^#? ?{field} =", text, re.M), f"{model.__name__}.{field}"


def test_unknown_key_names_its_path() -> None:
    data = {**MINIMAL, "etcd": {"endpoint": ["http://x:2379"]}}
    assert "At 'etcd.endpoint': unknown key" in error_of(data)


def test_every_error_is_reported_at_once_on_one_line() -> None:
    data = {
        "schedule": {"cron": "0 */12 * *"},
        "retention": {"keep_daily": -1},
        "destination": [{"name": "local", "type": "local", "path": "/x", "bogus": 1}],
    }
    message = error_of(data)
    assert "\n" not in message
    assert "At 'schedule.cron': '0 */12 * *' has 4 fields; expected 5" in message
    assert "At 'retention.keep_daily'" in message
    assert "At 'destination[0].bogus': unknown key" in message


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ({"name": "x", "type": "nfs"}, "At 'destination[0]': type 'nfs' is unknown"),
        ({"name": "x", "path": "/x"}, "At 'destination[0]': the key 'type' is missing"),
        ({"name": "x", "type": "local"}, "At 'destination[0].path': required key is missing"),
        ({"name": "a b", "type": "local", "path": "/x"}, "At 'destination[0].name': may hold"),
    ],
)
def test_destination_errors(destination: dict[str, str], expected: str) -> None:
    assert expected in error_of({"destination": [destination]})


def test_no_destination_is_an_error() -> None:
    assert "At 'destination': required key is missing" in error_of({})


def test_duplicate_destination_names() -> None:
    twice = MINIMAL["destination"] * 2
    assert "destination name 'local' is used twice" in error_of({"destination": twice})


@pytest.mark.parametrize(
    "endpoint", ["ftp://10.0.0.1:2379", "https://:2379", "http://10.0.0.1:99999"]
)
def test_bad_endpoints(endpoint: str) -> None:
    assert "At 'etcd.endpoints'" in error_of({**MINIMAL, "etcd": {"endpoints": [endpoint]}})


def test_cert_without_key() -> None:
    message = error_of({**MINIMAL, "etcd": {"cert": "/etc/etcd.pem"}})
    assert "cert and key must be given together" in message


@pytest.mark.parametrize(
    "cron",
    ["0 */12 * * *", "*/5 * * * *", "30 2 * * mon-fri", "0 0 1 jan,jul *", "0 0 * * 7", "@daily"],
)
def test_valid_cron(cron: str) -> None:
    assert validate_cron(cron) == cron


@pytest.mark.parametrize(
    ("cron", "reason"),
    [
        ("60 * * * *", "minute field: 60 is outside 0-59"),
        ("0 24 * * *", "hour field: 24 is outside 0-23"),
        ("0 0 0 * *", "day of month field: 0 is outside 1-31"),
        ("0 0 * 13 *", "month field: 13 is outside 1-12"),
        ("*/0 * * * *", "step 0 in '*/0' must be at least 1"),
        ("0 5-2 * * *", "runs backwards"),
        ("@reboot", "@reboot is not supported"),
        ("0 0 * * * *", "has 6 fields"),
    ],
)
def test_invalid_cron(cron: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        validate_cron(cron)


def test_cron_list_is_checked_item_by_item() -> None:
    data = {**MINIMAL, "schedule": {"cron": ["0 * * * *", "0 25 * * *"]}}
    assert "hour field: 25" in error_of(data)


def test_every_schedule_is_read_by_the_daemons_parser() -> None:
    """What `run` could not run, check-config refuses, naming the key."""
    destination = {**MINIMAL["destination"][0], "cron": "0 0 30 2 *"}
    message = error_of(
        {
            "schedule": {"cron": "5- * * * *"},
            "destination": [destination],
            "drill": {"cron": "0 0 * * 8"},
        }
    )
    assert "At 'schedule.cron': '5- * * * *': minute field: '5-' is missing the end" in message
    assert "At 'destination[0].cron': '0 0 30 2 *': never fires" in message
    assert "At 'drill.cron': '0 0 * * 8': day of week field: 8 is outside 0-7" in message


def test_password_from_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    etcd = parse_config({**MINIMAL, "etcd": {"password_file": str(secret)}}).etcd
    assert etcd.password() == "from-file"
    monkeypatch.setenv(ENV_ETCD_PASSWORD, "from-env")
    assert etcd.password() == "from-env"


def test_unreadable_password_file_names_the_key(tmp_path: Path) -> None:
    etcd = parse_config({**MINIMAL, "etcd": {"password_file": str(tmp_path / "nope")}}).etcd
    with pytest.raises(ConfigError, match=r"etcd\.password_file: cannot read"):
        etcd.password()


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[etcd\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def s3(**settings: object) -> dict[str, object]:
    return {"destination": [{"name": "s3", "type": "s3", "bucket": "etcd-backups", **settings}]}


def test_s3_defaults() -> None:
    destination = parse_config(s3()).destination[0]
    assert isinstance(destination, S3Destination)
    assert (destination.prefix, destination.compression) == ("", "none")
    assert destination.part_size == 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"prefix": "prod"}, "At 'destination[0].prefix': must end with '/'"),
        ({"prefix": "/prod/"}, "must not start with '/'"),
        ({"sse_kms_key_id": "k"}, 'sse_kms_key_id needs sse = "aws:kms"'),
        ({"access_key_id": "AKIA"}, "access_key_id and secret_access_key_file go together"),
        ({"part_size": 1024}, "At 'destination[0].part_size'"),
        ({"compression": "lz4"}, "At 'destination[0].compression'"),
        ({"retention": {"keep_dayly": 3}}, "At 'destination[0].retention.keep_dayly'"),
    ],
)
def test_s3_errors(settings: dict[str, object], expected: str) -> None:
    assert expected in error_of(s3(**settings))


def test_coordination_defaults_to_leader_with_a_local_member() -> None:
    assert not parse_config(MINIMAL).coordinated
    local = {**MINIMAL, "etcd": {"local_endpoint": "https://127.0.0.1:2379"}}
    assert parse_config(local).coordinated
    assert not parse_config({**local, "coordination": "none"}).coordinated
    message = error_of({**MINIMAL, "coordination": "leader"})
    assert 'coordination = "leader" needs etcd.local_endpoint' in message
    assert "At 'etcd.local_endpoint'" in error_of(
        {**MINIMAL, "etcd": {"local_endpoint": "ftp://x"}}
    )


def test_restore_members_for_the_runbook() -> None:
    members = {"etcd1": "https://10.0.0.1:2380", "etcd2": "https://10.0.0.2:2380"}
    config = parse_config({**MINIMAL, "restore": {"members": members}})
    assert config.restore.members == members
    assert parse_config(MINIMAL).restore.members == {}


@pytest.mark.parametrize(
    ("restore", "expected"),
    [
        ({"members": {"etcd1": "10.0.0.1:2380"}}, "At 'restore.members': etcd1: '10.0.0.1:2380'"),
        ({"members": {"a b": "https://10.0.0.1:2380"}}, "member name 'a b' may hold only"),
        (
            {"members": {"etcd1": "https://10.0.0.1:2380"}, "client_urls": {"etcd9": "http://x"}},
            "client_urls names members not in members: etcd9",
        ),
    ],
)
def test_restore_member_errors(restore: dict[str, object], expected: str) -> None:
    assert expected in error_of({**MINIMAL, "restore": restore})
