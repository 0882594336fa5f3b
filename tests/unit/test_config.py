"""What an operator sees when the config is right, and when it is wrong."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etcd_backupd.cli import main as cli_main
from etcd_backupd.config import ENV_ETCD_PASSWORD, ENV_ETCD_USERNAME, load_config, parse_config
from etcd_backupd.config_base import validate_cron
from etcd_backupd.config_destinations import S3Destination
from etcd_backupd.config_schedule import DEFAULT_CRON
from etcd_backupd.errors import ConfigError
from tests.harness.cli import run_cli

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
    "endpoint",
    [
        "ftp://10.0.0.1:2379",
        "https://:2379",
        "http://10.0.0.1:99999",
        "not a url",
        "http://bad host:2379",
        "https://999.999.1.1:2379",
        "http://[::1:2379",
    ],
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


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not valid TOML: invalid UTF-8 at byte 5"):
        load_config(path)


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


def local(**settings: object) -> dict[str, object]:
    return {"destination": [{"name": "local", "type": "local", "path": "/x", **settings}]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**MINIMAL, "retention": {"keep_last": "3"}}, "At 'retention.keep_last': Input should"),
        ({**MINIMAL, "retention": {"keep_last": True}}, "At 'retention.keep_last': Input should"),
        ({**MINIMAL, "schedule": {"catch_up": 1}}, "At 'schedule.catch_up': Input should"),
        ({**MINIMAL, "schedule": {"jitter": "5"}}, "At 'schedule.jitter': Input should"),
        ({**MINIMAL, "etcd": {"dial_timeout": float("inf")}}, "At 'etcd.dial_timeout': "),
        ({**MINIMAL, "etcd": {"stall_timeout": float("nan")}}, "At 'etcd.stall_timeout': "),
        ({**MINIMAL, "schedule": {"shutdown_timeout": float("inf")}}, "schedule.shutdown_timeout"),
        ({**MINIMAL, "schedule": {"retry_attempts": 100_000_000}}, "At 'schedule.retry_attempts'"),
        ({**MINIMAL, "schedule": {"retry_backoff": 1e12}}, "At 'schedule.retry_backoff'"),
        ({**MINIMAL, "etcd": {"cluster_name": 7}}, "At 'etcd.cluster_name': Input should"),
        ({**MINIMAL, "etcd": {"endpoints": "http://x:2379"}}, "At 'etcd.endpoints': Input"),
        ({**MINIMAL, "metrics": {"listen": "999.999.1.1:80"}}, "At 'metrics.listen'"),
        ({**MINIMAL, "metrics": {"listen": "bad host!:80"}}, "At 'metrics.listen'"),
        ({**MINIMAL, "metrics": {"listen": "::1:80"}}, "At 'metrics.listen'"),
        ({**MINIMAL, "state_dir": ""}, "At 'state_dir': must not be empty"),
        ({**MINIMAL, "state_dir": 5}, "At 'state_dir'"),
        (local(path=""), "At 'destination[0].path': must not be empty"),
        (local(path="/x\0y"), "At 'destination[0].path': must not hold a NUL"),
        ({**MINIMAL, "etcd": {"password_file": " "}}, "At 'etcd.password_file': must not be"),
        (s3(endpoint_url="not a url"), "At 'destination[0].endpoint_url': 'not a url' is not"),
        (s3(endpoint_url="http://not a url"), "At 'destination[0].endpoint_url': 'http://not"),
        (s3(storage_class="PLATINUM"), "At 'destination[0].storage_class'"),
        (s3(object_lock_days=100_000_000), "At 'destination[0].object_lock_days'"),
        (s3(max_concurrency="8"), "At 'destination[0].max_concurrency'"),
        (s3(bucket="bad bucket!"), "At 'destination[0].bucket': 'bad bucket!' is not a bucket"),
        (s3(bucket="-x-"), "At 'destination[0].bucket'"),
        ({**MINIMAL, "etcd": {"cluster_name": "c" * 129}}, "At 'etcd.cluster_name': String"),
        (local(name="d" * 65), "At 'destination[0].name': String should have at most 64"),
    ],
)
def test_bad_values_name_their_field_on_one_line(data: dict[str, object], expected: str) -> None:
    message = error_of(data)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (
            {**MINIMAL, "etcd": {"endpoints": ["http://root:hunter2@10.0.0.1:2379"]}},
            "etcd.endpoints",
        ),
        ({**MINIMAL, "etcd": {"endpoints": ["root:hunter2@10.0.0.1:2379"]}}, "etcd.endpoints"),
        (
            {**MINIMAL, "etcd": {"local_endpoint": "https://u:hunter2@h:2379"}},
            "etcd.local_endpoint",
        ),
        (s3(endpoint_url="http://AKIA:hunter2@minio:9000"), "destination[0].endpoint_url"),
        ({**MINIMAL, "restore": {"members": {"a": "https://u:hunter2@h:2380"}}}, "restore.members"),
    ],
)
def test_credentials_in_a_url_are_refused_and_never_shown(
    data: dict[str, object], field: str
) -> None:
    message = error_of(data)
    assert f"At '{field}'" in message and "holds credentials" in message
    assert "hunter2" not in message


def test_valid_listen_addresses() -> None:
    for listen in ("127.0.0.1:9479", "[::1]:9479", "0.0.0.0:80", "metrics.local:9479", ""):
        assert parse_config({**MINIMAL, "metrics": {"listen": listen}}).metrics.listen == listen


def test_username_without_password_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    etcd = parse_config({**MINIMAL, "etcd": {"username": "root"}}).etcd
    with pytest.raises(ConfigError, match=r"etcd\.username is set but no password is"):
        etcd.credentials()
    monkeypatch.setenv(ENV_ETCD_PASSWORD, "pw")
    assert etcd.credentials() == ("root", "pw")
    monkeypatch.delenv(ENV_ETCD_PASSWORD)
    monkeypatch.setenv(ENV_ETCD_USERNAME, "root")
    with pytest.raises(ConfigError, match=r"etcd\.username is set but no password is"):
        parse_config(MINIMAL).etcd.credentials()


def test_password_without_user_and_empty_secrets(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    etcd = parse_config({**MINIMAL, "etcd": {"password_file": str(secret)}}).etcd
    with pytest.raises(ConfigError, match=r"etcd\.password_file is set but no user is"):
        etcd.credentials()
    secret.write_text("\n")
    with pytest.raises(ConfigError, match=r"etcd\.password_file: .* is empty"):
        etcd.password()
    s3_config = parse_config(s3(access_key_id="AKIA", secret_access_key_file=str(secret)))
    destination = s3_config.destination[0]
    assert isinstance(destination, S3Destination)
    with pytest.raises(ConfigError, match=r"secret_access_key_file: .* is empty"):
        destination.secret_access_key()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        text + '\n[[destination]]\nname = "local"\ntype = "local"\npath = "/var/backups/etcd"\n'
    )
    path.chmod(0o600)
    return path


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_reads_every_file_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    key = tmp_path / "secret"
    key.write_text("s3cr3t\n")
    key.chmod(0o600)
    path = write_config(
        tmp_path,
        f'[etcd]\ncacert = "{tmp_path / "missing.pem"}"\nkey = "{fifo}"\ncert = "{key}"\n'
        f'[metrics]\nclient_ca = "{tmp_path}"\ncert = "{key}"\nkey = "{key}"\n'
        f'[drill]\nbin_dir = "{key}"\n'
        '[[destination]]\nname = "s3"\ntype = "s3"\nbucket = "b-1"\naccess_key_id = "AKIA"\n'
        f'secret_access_key_file = "{tmp_path / "nope"}"\n',
    )
    code, out, err = check_config(path, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    for expected in (
        f"etcd.cacert: cannot read {tmp_path / 'missing.pem'}: No such file or directory",
        f"etcd.key: {fifo} is not a file",
        f"metrics.client_ca: {tmp_path} is not a file",
        f"drill.bin_dir: {key} is not a directory",
        f"destination[0].secret_access_key_file: cannot read {tmp_path / 'nope'}",
    ):
        assert expected in err


def test_check_config_warns_of_secrets_others_may_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = {name: tmp_path / name for name in ("password", "tls.key", "s3-secret", "age")}
    for secret in secrets.values():
        secret.write_text("s3cr3t\n")
        secret.chmod(0o600)
    # encrypted, so that check-config's one other warning (plaintext off host) stays out
    recipient = recipient_pair()[0]
    path = write_config(
        tmp_path,
        f'[etcd]\nusername = "root"\npassword_file = "{secrets["password"]}"\n'
        f'cert = "{secrets["tls.key"]}"\nkey = "{secrets["tls.key"]}"\n'
        f'[drill]\nidentity_file = "{secrets["age"]}"\n'
        '[[destination]]\nname = "s3"\ntype = "s3"\nbucket = "b-1"\naccess_key_id = "AKIA"\n'
        f'secret_access_key_file = "{secrets["s3-secret"]}"\n'
        f'encryption = {{ recipients = ["{recipient}"] }}\n',
    )
    assert check_config(path, capsys) == (0, check_config(path, capsys)[1], "")
    path.chmod(0o644)
    secrets["password"].chmod(0o640)
    secrets["tls.key"].chmod(0o604)
    secrets["s3-secret"].chmod(0o644)
    secrets["age"].chmod(0o640)
    code, _, err = check_config(path, capsys)
    assert code == 0
    assert err.splitlines() == [
        f"warning: config: {path} has mode 0644, so other users may read it; run chmod 600 {path}",
        f"warning: etcd.key: {secrets['tls.key']} has mode 0604, so other users may read it; "
        f"run chmod 600 {secrets['tls.key']}",
        f"warning: etcd.password_file: {secrets['password']} has mode 0640, so other users may "
        f"read it; run chmod 600 {secrets['password']}",
        f"warning: drill.identity_file: {secrets['age']} has mode 0640, so other users may "
        f"read it; run chmod 600 {secrets['age']}",
        f"warning: destination[0].secret_access_key_file: {secrets['s3-secret']} has mode 0644, "
        f"so other users may read it; run chmod 600 {secrets['s3-secret']}",
    ]
    assert "s3cr3t" not in err


def test_notify_entries_are_checked_without_echoing_their_secret() -> None:
    bad = {
        **MINIMAL,
        "notify": [
            {"type": "pager", "url": "https://x"},
            {"type": "ping", "url": "hc-ping.com/secret-uuid"},
            {"type": "webhook", "url": "https://hooks.example/h", "on": ["sucess"], "retries": -1},
        ],
    }
    message = error_of(bad)
    assert "At 'notify[0]': type 'pager' is unknown; expected one of: ping, webhook" in message
    assert "At 'notify[1].url': the URL is not an http(s)://host:port URL" in message
    assert "At 'notify[2].on[0]'" in message
    assert "At 'notify[2].retries'" in message
    assert "secret-uuid" not in message
    good = parse_config({**MINIMAL, "notify": [{"type": "webhook", "url": "https://h.example/"}]})
    assert good.notify[0].type == "webhook"
    assert good.notify[0].on == ["failure", "drill_failure"]


def recipient_pair() -> tuple[str, str]:
    from etcd_backupd.encryption import new_identity

    return new_identity(datetime.now(UTC))[::-1]


def test_encryption_takes_recipients_and_a_recipients_file(tmp_path: Path) -> None:
    first, second, third = (recipient_pair()[0] for _ in range(3))
    listed = tmp_path / "recipients.txt"
    listed.write_text(f"# backup keys\n{second}\n\n  {third}\n{first}\n")
    local = MINIMAL["destination"][0]
    config = parse_config(
        {
            "destination": [
                {
                    **local,
                    "encryption": {"recipients": [f" {first}"], "recipients_file": str(listed)},
                }
            ]
        }
    )
    (destination,) = config.destination
    assert destination.encryption is not None
    assert destination.encryption.public_keys() == [first, second, third]
    assert len(destination.encryption.parsed()) == 3
    assert destination.stored_format.name == "age"


@pytest.mark.parametrize(
    ("encryption", "expected"),
    [
        (
            {"recipients": ["age1nope"]},
            "At 'destination[0].encryption.recipients': recipients[0]: invalid age recipient "
            "'age1nope'",
        ),
        (
            {"recipients": ["AGE-SECRET-KEY-1XYZ"]},
            "At 'destination[0].encryption.recipients': recipients[0]: 'AGE-SECRET-KEY-1XYZ' is "
            "not an age recipient",
        ),
        (
            {"recipients": []},
            "At 'destination[0].encryption': encryption needs at least one recipient",
        ),
        (
            {"recipients_file": "/nonexistent/recipients"},
            "At 'destination[0].encryption': recipients_file: cannot read /nonexistent/recipients: "
            "No such file or directory",
        ),
        ({"recipient": []}, "At 'destination[0].encryption.recipient': unknown key"),
    ],
)
def test_encryption_errors_name_the_field_and_the_reason(
    encryption: dict[str, object], expected: str
) -> None:
    local = MINIMAL["destination"][0]
    assert expected in error_of({"destination": [{**local, "encryption": encryption}]})


def test_a_bad_line_of_the_recipients_file_is_named(tmp_path: Path) -> None:
    listed = tmp_path / "recipients.txt"
    listed.write_text(f"{recipient_pair()[0]}\nssh-dss AAAA\n")
    local = MINIMAL["destination"][0]
    message = error_of({"destination": [{**local, "encryption": {"recipients_file": str(listed)}}]})
    assert f"recipients_file: {listed}, line 2: 'ssh-dss AAAA' is not an age recipient" in message


def test_check_config_warns_when_s3_stores_plaintext(tmp_path: Path) -> None:
    recipient = recipient_pair()[0]
    config = tmp_path / "config.toml"
    config.write_text(
        "[[destination]]\nname = 'plain'\ntype = 's3'\nbucket = 'bkt'\nmax_attempts = 1\n"
        "endpoint_url = 'http://127.0.0.1:9'\nconnect_timeout = 0.2\n"
        "[[destination]]\nname = 'sealed'\ntype = 's3'\nbucket = 'bkt'\nprefix = 'x/'\n"
        "endpoint_url = 'http://127.0.0.1:9'\nconnect_timeout = 0.2\n"
        f"encryption = {{ recipients = ['{recipient}'] }}\n"
        "[[destination]]\nname = 'disk'\ntype = 'local'\npath = '/x'\n"
    )
    config.chmod(0o600)
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "plaintext" in line]
    assert warnings == [
        "warning: destination plain: stores snapshots in plaintext off this host, readable by "
        'anyone who can read the bucket; add encryption = { recipients = ["age1..."] }'
    ]
    assert (
        "destination sealed: s3 s3://bkt/x/ (compression none, age-encrypted to 1 recipient(s))"
        in result.stdout
    )
