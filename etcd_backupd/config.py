"""The configuration file: the top-level model and the smaller tables (etcd, metrics, drill,
restore, notify), env overrides, loading and one-line errors. The schedule and retention tables
live in `config_schedule.py`, the destinations in `config_destinations.py`, what they all share in
`config_base.py`.

The models are the single source of truth: validation, defaults and the field descriptions that
`config.example.toml` documents all come from here.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .config_base import (
    DAY,
    NAME_RE,
    NAME_RULE,
    ConfigPath,
    Strict,
    shown,
    url_problem,
    valid_host,
    validate_cron,
)
from .config_destinations import DestinationConfig
from .config_schedule import RetentionConfig, ScheduleConfig
from .errors import ConfigError

ENV_ETCD_PASSWORD = "ETCD_BACKUPD_ETCD_PASSWORD"
ENV_ETCD_USERNAME = "ETCD_BACKUPD_ETCD_USERNAME"


def restore_url_problem(name: str, url: str) -> str | None:
    """Why the [restore] tables, and restore-plan's --member and --client-url, refuse member
    `name`'s URL, or None: it must be an http(s)://host:port URL without credentials."""
    problem = url_problem(url)
    return f"{name}: {shown(url)} {problem}" if problem else None


class EtcdConfig(Strict):
    endpoints: list[str] = Field(
        default=["http://127.0.0.1:2379"],
        min_length=1,
        description="Client URLs of the cluster's members. Each healthy member is tried in turn; "
        "followers are preferred so the leader is not loaded. The log says which member served "
        "each snapshot.",
        examples=[["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"]],
    )
    cacert: ConfigPath | None = Field(
        None,
        description="TLS: the CA that signed the members' certificates. An https endpoint "
        "without cacert is checked against the system's CA store.",
        examples=["/etc/kubernetes/ssl/ca.pem"],
    )
    cert: ConfigPath | None = Field(
        None,
        description="Client certificate for mutual TLS (with key).",
        examples=["/etc/kubernetes/ssl/etcd.pem"],
    )
    key: ConfigPath | None = Field(
        None,
        description="Client private key for mutual TLS (with cert).",
        examples=["/etc/kubernetes/ssl/etcd-key.pem"],
    )
    username: str | None = Field(
        None,
        description="etcd auth (optional). Snapshots need a user with etcd's root role. "
        f"{ENV_ETCD_USERNAME} in the environment overrides username.",
        examples=["root"],
    )
    password_file: ConfigPath | None = Field(
        None,
        description="File holding the etcd password for username; the environment variable "
        f"{ENV_ETCD_PASSWORD} wins over it.",
        examples=["/etc/etcd-backupd/etcd-password"],
    )
    cluster_name: str | None = Field(
        None,
        # with the rest of a snapshot's name and suffixes, a file name stays within 255 bytes
        max_length=128,
        description="Name used in snapshot file names (letters, digits, '.', '_', '-'); the "
        "cluster ID in hex when unset, e.g. etcd-snapshot-prod-eu1-20261123T224500Z.db.",
        examples=["prod-eu1"],
    )
    dial_timeout: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds to wait for a member to answer its status and member list.",
    )
    stall_timeout: float = Field(
        60.0,
        gt=0,
        le=DAY,
        description="A snapshot stream that delivers no data for this many seconds is aborted "
        "and the next member is tried. There is no limit on the stream as a whole: a large "
        "database may take minutes.",
    )
    local_endpoint: str | None = Field(
        None,
        description="Client URL of the member on this host, for coordination between hosts: "
        "with it, only the host whose member leads takes the snapshot.",
        examples=["https://127.0.0.1:2379"],
    )

    @field_validator("local_endpoint")
    @classmethod
    def _local_is_a_url(cls, endpoint: str | None) -> str | None:
        if endpoint is not None:
            cls._endpoints_are_urls([endpoint])
        return endpoint

    @field_validator("endpoints")
    @classmethod
    def _endpoints_are_urls(cls, endpoints: list[str]) -> list[str]:
        for endpoint in endpoints:
            problem = url_problem(endpoint if "://" in endpoint else f"http://{endpoint}")
            if problem:
                raise ValueError(f"{shown(endpoint)} {problem}")
        return endpoints

    @field_validator("cluster_name")
    @classmethod
    def _cluster_name_is_safe(cls, name: str | None) -> str | None:
        if name is not None and not NAME_RE.match(name):
            raise ValueError(NAME_RULE)
        return name

    @model_validator(mode="after")
    def _tls_pairs(self) -> EtcdConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together for mutual TLS")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.cacert is not None or any(e.startswith("https://") for e in self.endpoints)

    def password(self) -> str | None:
        """The etcd password: the environment wins over password_file."""
        from_env = os.environ.get(ENV_ETCD_PASSWORD)
        if from_env:
            return from_env
        if self.password_file is None:
            return None
        try:
            password = self.password_file.read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"etcd.password_file: cannot read {self.password_file}: {reason}"
            ) from exc
        if not password:
            raise ConfigError(f"etcd.password_file: {self.password_file} is empty")
        return password

    def user(self) -> str | None:
        return os.environ.get(ENV_ETCD_USERNAME) or self.username

    def credentials(self) -> tuple[str | None, str | None]:
        """User and password for etcd auth, both or neither."""
        user, password = self.user(), self.password()
        if user and not password:
            raise ConfigError(
                f"etcd.username is set but no password is: set etcd.password_file or "
                f"{ENV_ETCD_PASSWORD}"
            )
        if password and not user:
            raise ConfigError(
                f"etcd.password_file is set but no user is: set etcd.username or "
                f"{ENV_ETCD_USERNAME}"
            )
        return user, password


class MetricsConfig(Strict):
    listen: str = Field(
        "127.0.0.1:9479",
        description="host:port where `etcd-backupd run` serves /metrics, /healthz and /readyz; "
        '"" turns the server off.',
    )
    cert: ConfigPath | None = Field(
        None,
        description="TLS certificate for the metrics server (with key).",
        examples=["/etc/etcd-backupd/metrics.pem"],
    )
    key: ConfigPath | None = Field(
        None,
        description="TLS key for the metrics server (with cert).",
        examples=["/etc/etcd-backupd/metrics-key.pem"],
    )
    client_ca: ConfigPath | None = Field(
        None,
        description="Require client certificates from this CA (with cert and key).",
        examples=["/etc/etcd-backupd/prometheus-ca.pem"],
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        if listen:
            host, _, port = listen.rpartition(":")
            if not valid_host(host) or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError(f"{listen!r} is not host:port (an IP address or a host name)")
        return listen

    @model_validator(mode="after")
    def _tls_pairs(self) -> MetricsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        if self.client_ca is not None and self.cert is None:
            raise ValueError("client_ca needs cert and key")
        return self


class DrillConfig(Strict):
    """Restore drills: restore the newest backup of each destination into a throwaway etcd on
    loopback, check its revision and key count against the manifest and that expect_prefixes
    hold keys, then delete it. `etcd-backupd drill` runs one now; with enabled, the daemon on
    cron."""

    enabled: bool = Field(False, description="Run restore drills from the daemon.")
    cron: str = Field("0 3 * * 0", description="When the daemon runs a drill (weekly by default).")
    expect_prefixes: list[str] = Field(
        default=["/registry/"],
        description="Key prefixes a restored cluster must hold keys under.",
    )
    bin_dir: ConfigPath | None = Field(
        None,
        description="Directory holding etcd, etcdctl and etcdutl of the cluster's version; PATH "
        "when unset. Also used by `etcd-backupd restore`.",
        examples=["/usr/local/bin"],
    )
    identity_file: ConfigPath | None = Field(
        None,
        description="age identity file the daemon's drills decrypt encrypted backups with (the "
        "`drill` command takes --identity). Taking backups needs only the recipients: set this "
        "only on a host that runs drills.",
        examples=["/etc/etcd-backupd/age-identity.txt"],
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        return validate_cron(cron)


class RestoreConfig(Strict):
    members: dict[str, str] = Field(
        default_factory=dict,
        description="The cluster's members, for `etcd-backupd restore-plan --config ...` "
        "(--member replaces them): member name = the peer URL the member advertises (its "
        "--initial-advertise-peer-urls).",
        examples=[{"etcd1": "https://192.168.7.101:2380", "etcd2": "https://192.168.7.102:2380"}],
    )
    client_urls: dict[str, str] = Field(
        default_factory=dict,
        description="A member's client URL for the runbook's health checks; default: its peer "
        "host, port 2379.",
        examples=[{"etcd1": "https://192.168.7.101:2379"}],
    )

    @field_validator("members", "client_urls")
    @classmethod
    def _names_and_urls(cls, urls: dict[str, str]) -> dict[str, str]:
        for name, url in urls.items():
            if not NAME_RE.match(name):
                raise ValueError(f"member name {name!r} {NAME_RULE}")
            problem = restore_url_problem(name, url)
            if problem:
                raise ValueError(problem)
        return urls

    @model_validator(mode="after")
    def _client_urls_of_members(self) -> RestoreConfig:
        unknown = sorted(self.client_urls.keys() - self.members.keys())
        if unknown:
            raise ValueError(f"client_urls names members not in members: {', '.join(unknown)}")
        return self


NotifyEvent = Literal["success", "failure", "drill_failure"]


class _NotifyBase(Strict):
    url: str = Field(
        description="Where notifications go (http or https).",
        examples=["https://hc-ping.com/your-check-uuid"],
    )
    timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds to wait for the server to accept and answer each request.",
    )
    retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries after a failed attempt (connection error, timeout, HTTP 429 or 5xx).",
    )
    retry_backoff: float = Field(
        2.0,
        gt=0,
        le=300,
        description="Seconds before the first retry; doubled for each next one.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        problem = url_problem(url)
        if problem:
            # the URL may hold a secret (a ping token): say what is wrong without echoing it
            raise ValueError(f"the URL {problem}")
        return url


class PingNotify(_NotifyBase):
    """A ping URL (healthchecks.io and compatible): <url>/start when a cycle starts, <url> when
    it succeeded, <url>/fail with the error as the body when it failed."""

    type: Literal["ping"]


class WebhookNotify(_NotifyBase):
    """A webhook: a JSON object (event, time, host, cluster, summary, snapshot, revision, size,
    error, failed_stage, destinations) POSTed on the events named in on."""

    type: Literal["webhook"]
    url: str = Field(
        description="Where the JSON is POSTed (http or https).",
        examples=["https://alerts.example.com/hooks/etcd-backup"],
    )
    on: list[NotifyEvent] = Field(
        default=["failure", "drill_failure"],
        min_length=1,
        description='Events posted: "success", "failure", "drill_failure".',
    )


NotifyConfig = Annotated[PingNotify | WebhookNotify, Field(discriminator="type")]


class Config(Strict):
    state_dir: ConfigPath = Field(
        Path("/var/lib/etcd-backupd"),
        description="The daemon's own files. Snapshots are streamed into the first local "
        "destination; only when no local destination can take the stream are they spooled under "
        "<state_dir>/spool.",
    )
    etcd: EtcdConfig = Field(default_factory=lambda: EtcdConfig())
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig())
    destination: list[DestinationConfig] = Field(
        min_length=1, description="One or more destinations; every snapshot is shipped to each."
    )
    retention: RetentionConfig = Field(default_factory=lambda: RetentionConfig())
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig())
    drill: DrillConfig = Field(default_factory=lambda: DrillConfig())
    restore: RestoreConfig = Field(default_factory=lambda: RestoreConfig())
    notify: list[NotifyConfig] = Field(
        default_factory=list,
        description="Notifications without Prometheus (optional, as many as you like). Each "
        "goes out in the background with a timeout and retries; one that cannot be delivered is "
        "logged and never fails a backup.",
    )
    coordination: Literal["leader", "none"] | None = Field(
        None,
        description="Several hosts backing up one cluster (a daemon on every etcd member): with "
        '"leader", the host whose local member (etcd.local_endpoint) leads takes the snapshot of '
        "each fire time; the others stand by, wait schedule.standby_grace, and take it "
        "themselves only if no snapshot for that fire time exists or is under way in the "
        'destinations. Read-only: no lock is written to etcd. Default: "leader" when '
        'etcd.local_endpoint is set, else "none" (every host backs up).',
        examples=["leader"],
    )

    @property
    def coordinated(self) -> bool:
        mode = self.coordination or ("leader" if self.etcd.local_endpoint else "none")
        return mode == "leader"

    def plaintext_off_host(self) -> list[str]:
        """A warning for each off-host destination (S3) that stores snapshots unencrypted:
        they hold every Secret of the cluster, readable by whoever can read the bucket."""
        return [
            f"destination {d.name}: stores snapshots in plaintext off this host, readable by "
            'anyone who can read the bucket; add encryption = { recipients = ["age1..."] }'
            for d in self.destination
            if d.type == "s3" and d.encryption is None
        ]

    @model_validator(mode="after")
    def _leader_needs_local_member(self) -> Config:
        if self.coordination == "leader" and not self.etcd.local_endpoint:
            raise ValueError('coordination = "leader" needs etcd.local_endpoint')
        return self

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Config:
        seen: set[str] = set()
        for destination in self.destination:
            if destination.name in seen:
                raise ValueError(f"destination name {destination.name!r} is used twice")
            seen.add(destination.name)
        return self


def union_members(union: Any) -> tuple[type[BaseModel], ...]:
    """The models of an `Annotated[A | B, Field(discriminator=...)]`, in declaration order."""
    members: tuple[type[BaseModel], ...] = get_args(get_args(union)[0])
    return members


def type_tag(model: type[BaseModel]) -> str:
    """The `type` value that selects a model of a union."""
    tag: str = get_args(model.model_fields["type"].annotation)[0]
    return tag


DESTINATION_TYPES = tuple(type_tag(m) for m in union_members(DestinationConfig))
NOTIFY_TYPES = tuple(type_tag(m) for m in union_members(NotifyConfig))


def _location(loc: tuple[int | str, ...]) -> str:
    path = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(previous, int) and part in DESTINATION_TYPES + NOTIFY_TYPES:
            # pydantic names the union member it tried; the user never wrote that key
            pass
        else:
            path += f".{part}" if path else part
        previous = part
    return path or "(top level)"


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see config.example.toml)"
    if kind == "missing":
        return "required key is missing"
    types = NOTIFY_TYPES if error["loc"][:1] == ("notify",) else DESTINATION_TYPES
    if kind == "union_tag_invalid":
        return f"type {error['input'].get('type')!r} is unknown; expected one of: " + ", ".join(
            types
        )
    if kind == "union_tag_not_found":
        return "the key 'type' is missing; expected one of: " + ", ".join(types)
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def format_validation_error(exc: ValidationError) -> str:
    lines = [f"At '{_location(e['loc'])}': {_describe(e)}" for e in exc.errors()]
    return "; ".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None


def load_config(path: Path) -> Config:
    """Read and validate a TOML config; every problem is reported in one ConfigError line."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid TOML: invalid UTF-8 at byte {exc.start}; save it as UTF-8"
        ) from None
    return parse_config(data, str(path))
