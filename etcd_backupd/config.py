"""The configuration file: pydantic models of the TOML, defaults, env overrides, one-line errors.

The models are the single source of truth: validation, defaults and the field descriptions that
`config.example.toml` documents all come from here.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .cron import Cron
from .errors import ConfigError
from .retention import parse_duration

DEFAULT_CRON = "0 */12 * * *"
ENV_ETCD_PASSWORD = "ETCD_BACKUPD_ETCD_PASSWORD"
ENV_ETCD_USERNAME = "ETCD_BACKUPD_ETCD_USERNAME"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAME_RULE = "may hold only letters, digits, '.', '_' and '-'"


def _url_problem(url: str) -> str | None:
    """What is wrong with an http(s)://host:port URL, or None when nothing is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not an http(s)://host:port URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s)://host:port URL"
    if "@" in parts.netloc:
        return "holds credentials (user:password@), which are never sent from there"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return "has an invalid port"
    return None


def _shown(url: str) -> str:
    """A URL for a message, without any credentials it holds."""
    if "@" not in url:
        return repr(url)
    scheme, sep, rest = url.rpartition("://")
    return repr(f"{scheme}{sep}***@{rest.rpartition('@')[2]}")


def _not_empty_path(value: Any) -> Any:
    # Path("") is the working directory: an empty setting would silently mean "here"
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    if isinstance(value, str) and "\0" in value:
        raise ValueError("must not hold a NUL character")
    return value


# TOML gives strings; the models are strict (no "3" for 3, no 1 for true) except that a path
# is written as a string
ConfigPath = Annotated[Path, Field(strict=False), BeforeValidator(_not_empty_path)]
# no setting of ours means anything beyond a day, and a typo of 1e8 must not pass
DAY = 86400.0
# the storage classes S3 knows; a store that has others is told apart by its endpoint_url
STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "GLACIER_IR",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "SNOW",
    "EXPRESS_ONEZONE",
)
# what boto3 accepts as a bucket name (S3 itself is stricter: 3-63 lowercase characters)
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")
_HOST_RE = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def validate_cron(expression: str) -> str:
    """Check a cron expression as the daemon reads it (see `cron.py`), refusing one that never
    fires."""
    Cron.parse(expression)
    return expression


class EtcdConfig(_Strict):
    endpoints: list[str] = Field(
        default=["http://127.0.0.1:2379"],
        min_length=1,
        description="Client URLs of the members to back up from; each healthy one is tried in turn",
    )
    cacert: ConfigPath | None = Field(
        None, description="CA bundle that signed the members' certificates"
    )
    cert: ConfigPath | None = Field(
        None, description="client certificate for mutual TLS (with key)"
    )
    key: ConfigPath | None = Field(
        None, description="client private key for mutual TLS (with cert)"
    )
    username: str | None = Field(
        None, description=f"etcd user for auth; or set {ENV_ETCD_USERNAME}"
    )
    password_file: ConfigPath | None = Field(
        None, description=f"file holding the etcd password; or set {ENV_ETCD_PASSWORD}"
    )
    cluster_name: str | None = Field(
        None,
        # with the rest of a snapshot's name and suffixes, a file name stays within 255 bytes
        max_length=128,
        description="name used in snapshot file names; the cluster ID (hex) when unset",
    )
    dial_timeout: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="seconds to wait for a member to answer status and member list",
    )
    stall_timeout: float = Field(
        60.0,
        gt=0,
        le=DAY,
        description="abort a snapshot stream that delivers no data for this many seconds",
    )
    local_endpoint: str | None = Field(
        None,
        description="client URL of the member on this host; with it, only the host whose "
        "member leads takes the snapshot (see coordination)",
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
            problem = _url_problem(endpoint if "://" in endpoint else f"http://{endpoint}")
            if problem:
                raise ValueError(f"{_shown(endpoint)} {problem}")
        return endpoints

    @field_validator("cluster_name")
    @classmethod
    def _cluster_name_is_safe(cls, name: str | None) -> str | None:
        if name is not None and not _NAME_RE.match(name):
            raise ValueError(_NAME_RULE)
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


class ScheduleConfig(_Strict):
    cron: str | list[str] = Field(
        DEFAULT_CRON, description="5-field cron expression, or a list of them, in timezone"
    )
    timezone: str = Field("UTC", description="time zone the cron expressions are read in")
    jitter: float = Field(
        0.0,
        ge=0,
        le=DAY,
        description="wait up to this many seconds after each fire time, at random",
    )
    retry_attempts: int = Field(
        3, ge=0, le=100, description="retries of a failed cycle before the next fire time"
    )
    retry_backoff: float = Field(
        60.0, gt=0, le=DAY, description="seconds before the first retry; doubled for each next one"
    )
    catch_up: bool = Field(
        True, description="at start, back up now if the newest backup predates the last fire"
    )
    shutdown_timeout: float = Field(
        300.0, ge=0, le=DAY, description="on SIGTERM, seconds a running cycle may take to finish"
    )
    standby_grace: float = Field(
        120.0,
        ge=0,
        le=DAY,
        description="with coordination, seconds a standby host waits for the leader's "
        "snapshot of a fire time before it takes one itself",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {zone!r} (e.g. UTC, Europe/Berlin)") from exc
        return zone

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | list[str]) -> str | list[str]:
        expressions = [cron] if isinstance(cron, str) else cron
        if not expressions:
            raise ValueError("needs at least one cron expression")
        for expression in expressions:
            validate_cron(expression)
        return cron


class RetentionConfig(_Strict):
    keep_last: int | None = Field(
        None, ge=0, le=1_000_000, description="keep the N newest snapshots"
    )
    keep_hourly: int | None = Field(
        None, ge=0, le=1_000_000, description="newest in each of the last N hours"
    )
    keep_daily: int | None = Field(
        None, ge=0, le=1_000_000, description="newest in each of the last N days"
    )
    keep_weekly: int | None = Field(
        None, ge=0, le=1_000_000, description="newest in each of the last N weeks"
    )
    keep_monthly: int | None = Field(
        None, ge=0, le=1_000_000, description="newest in each of the last N months"
    )
    keep_yearly: int | None = Field(
        None, ge=0, le=1_000_000, description="newest in each of the last N years"
    )
    keep_within: str | None = Field(
        None, description='keep all snapshots this close to the newest one, e.g. "14d"'
    )

    @field_validator("keep_within")
    @classmethod
    def _duration(cls, text: str | None) -> str | None:
        if text is not None:
            parse_duration(text)
        return text


Compression = Literal["none", "zstd", "gzip"]
MIB = 1024 * 1024


class _DestinationBase(_Strict):
    name: str = Field(max_length=64, description="name used in logs, metrics and --destination")
    compression: Compression = Field(
        "none",
        description='"none" keeps files etcd\'s restore takes as they are; "zstd" or "gzip"',
    )
    retention: RetentionConfig | None = Field(
        None, description="overrides the global [retention] for this destination"
    )
    cron: str | list[str] | None = Field(
        None, description="this destination's own schedule; the global one when unset"
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | list[str] | None) -> str | list[str] | None:
        for expression in [cron] if isinstance(cron, str) else cron or []:
            validate_cron(expression)
        return cron

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(_NAME_RULE)
        return name


class LocalDestination(_DestinationBase):
    type: Literal["local"]
    path: ConfigPath = Field(description="directory holding snapshots and their manifests")


class S3Destination(_DestinationBase):
    type: Literal["s3"]
    bucket: str = Field(min_length=3, description="bucket name")
    prefix: str = Field(
        "", description="every object the tool writes, lists or deletes lives under it"
    )
    region: str | None = Field(None, description="bucket region; boto3's default chain if unset")
    endpoint_url: str | None = Field(None, description="S3-compatible store (MinIO, Ceph RGW)")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description='"path" for most S3-compatible stores'
    )
    ca_bundle: ConfigPath | None = Field(None, description="CA bundle to trust for endpoint_url")
    storage_class: Literal[STORAGE_CLASSES] | None = Field(  # type: ignore[valid-type]
        None, description="e.g. STANDARD_IA, GLACIER_IR"
    )
    sse: Literal["AES256", "aws:kms"] | None = Field(None, description="server-side encryption")
    sse_kms_key_id: str | None = Field(None, description='KMS key for sse = "aws:kms"')
    object_lock_days: int | None = Field(
        None,
        gt=0,
        le=36500,
        description="Object Lock retention on each object (bucket needs Object Lock)",
    )
    object_lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = Field(
        "COMPLIANCE", description="Object Lock mode with object_lock_days"
    )
    delete_versions: bool = Field(
        False,
        description="in a versioned bucket, delete every version (and delete marker) of what "
        "retention deletes; otherwise old versions stay until a lifecycle rule removes them",
    )
    part_size: int = Field(
        8 * MIB, ge=5 * MIB, le=5 * 1024 * MIB, description="multipart part size in bytes"
    )
    max_concurrency: int = Field(8, ge=1, le=64, description="parts uploaded in parallel")
    max_attempts: int = Field(
        8, ge=1, le=30, description="attempts per request for throttling and 5xx errors"
    )
    connect_timeout: float = Field(
        10.0, gt=0, le=300, description="seconds to wait for a connection to the endpoint"
    )
    read_timeout: float = Field(
        60.0, gt=0, le=3600, description="seconds to wait for an answer to a request"
    )
    stall_timeout: float = Field(
        120.0,
        gt=0,
        le=86400,
        description="give the destination up for this cycle when no part of the upload has "
        "finished for this many seconds (the others still get the snapshot)",
    )
    deadline: float = Field(
        3600.0,
        gt=0,
        le=7 * 86400,
        description="seconds one cycle may spend on this destination in all",
    )
    access_key_id: str | None = Field(
        None, description="static credentials; boto3's default chain when unset"
    )
    secret_access_key_file: ConfigPath | None = Field(
        None, description="file holding the secret key for access_key_id"
    )

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, bucket: str) -> str:
        if not _BUCKET_RE.match(bucket):
            raise ValueError(
                f"{bucket!r} is not a bucket name: 3 to 255 letters, digits, '.', '_' and '-', "
                "starting and ending with a letter or digit"
            )
        return bucket

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, url: str | None) -> str | None:
        problem = _url_problem(url) if url is not None else None
        if problem:
            raise ValueError(f"{_shown(url or '')} {problem}")
        return url

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_folder(cls, prefix: str) -> str:
        if prefix.startswith("/"):
            raise ValueError("must not start with '/'")
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"must end with '/' (e.g. {prefix + '/'!r}) so it names a folder")
        return prefix

    @model_validator(mode="after")
    def _consistent(self) -> S3Destination:
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ValueError('sse_kms_key_id needs sse = "aws:kms"')
        if (self.access_key_id is None) != (self.secret_access_key_file is None):
            raise ValueError("access_key_id and secret_access_key_file go together")
        return self

    def secret_access_key(self) -> str | None:
        if self.secret_access_key_file is None:
            return None
        try:
            secret = self.secret_access_key_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"destination {self.name}: secret_access_key_file: cannot read "
                f"{self.secret_access_key_file}: {reason}"
            ) from exc
        if not secret:
            raise ConfigError(
                f"destination {self.name}: secret_access_key_file: "
                f"{self.secret_access_key_file} is empty"
            )
        return secret


DestinationConfig = Annotated[LocalDestination | S3Destination, Field(discriminator="type")]


class MetricsConfig(_Strict):
    listen: str = Field(
        "127.0.0.1:9479",
        description='host:port of /metrics, /healthz and /readyz; "" turns the server off',
    )
    cert: ConfigPath | None = Field(None, description="TLS certificate for the metrics server")
    key: ConfigPath | None = Field(None, description="TLS key for the metrics server")
    client_ca: ConfigPath | None = Field(
        None, description="require client certificates from this CA"
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        if listen:
            host, _, port = listen.rpartition(":")
            if not _valid_host(host) or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError(f"{listen!r} is not host:port (an IP address or a host name)")
        return listen

    @model_validator(mode="after")
    def _tls_pairs(self) -> MetricsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        if self.client_ca is not None and self.cert is None:
            raise ValueError("client_ca needs cert and key")
        return self


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # a dotted quad that is no address (999.999.1.1) is no host name either
        return not host.replace(".", "").isdigit() and _HOST_RE.match(host) is not None
    return True


class DrillConfig(_Strict):
    enabled: bool = Field(False, description="run restore drills from the daemon")
    cron: str = Field("0 3 * * 0", description="when the daemon runs a drill (weekly by default)")
    expect_prefixes: list[str] = Field(
        default=["/registry/"], description="key prefixes a restored cluster must hold keys under"
    )
    bin_dir: ConfigPath | None = Field(
        None, description="directory of etcd, etcdctl and etcdutl; PATH when unset"
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        return validate_cron(cron)


class RestoreConfig(_Strict):
    members: dict[str, str] = Field(
        default_factory=dict,
        description="the cluster's members for restore-plan: name = peer URL (the member's "
        "--initial-advertise-peer-urls)",
    )
    client_urls: dict[str, str] = Field(
        default_factory=dict,
        description="a member's client URL for the runbook's checks; default: its peer host, "
        "port 2379",
    )

    @field_validator("members", "client_urls")
    @classmethod
    def _names_and_urls(cls, urls: dict[str, str]) -> dict[str, str]:
        for name, url in urls.items():
            if not _NAME_RE.match(name):
                raise ValueError(f"member name {name!r} {_NAME_RULE}")
            problem = _url_problem(url)
            if problem:
                raise ValueError(f"{name}: {_shown(url)} {problem}")
        return urls

    @model_validator(mode="after")
    def _client_urls_of_members(self) -> RestoreConfig:
        unknown = sorted(self.client_urls.keys() - self.members.keys())
        if unknown:
            raise ValueError(f"client_urls names members not in members: {', '.join(unknown)}")
        return self


NotifyEvent = Literal["success", "failure", "drill_failure"]


class _NotifyBase(_Strict):
    url: str = Field(description="where notifications go (http or https)")
    timeout: float = Field(
        10.0, gt=0, le=300, description="seconds to wait for the server to accept and answer"
    )
    retries: int = Field(2, ge=0, le=10, description="retries after a failed attempt")
    retry_backoff: float = Field(
        2.0, gt=0, le=300, description="seconds before the first retry; doubled for each next one"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        problem = _url_problem(url)
        if problem:
            # the URL may hold a secret (a ping token): say what is wrong without echoing it
            raise ValueError(f"the URL {problem}")
        return url


class PingNotify(_NotifyBase):
    type: Literal["ping"]


class WebhookNotify(_NotifyBase):
    type: Literal["webhook"]
    on: list[NotifyEvent] = Field(
        default=["failure", "drill_failure"],
        min_length=1,
        description='events posted as JSON: "success", "failure", "drill_failure"',
    )


NotifyConfig = Annotated[PingNotify | WebhookNotify, Field(discriminator="type")]


class Config(_Strict):
    state_dir: ConfigPath = Field(
        Path("/var/lib/etcd-backupd"),
        description="the daemon's own files; snapshots are spooled under it when no local "
        "destination can take the stream",
    )
    etcd: EtcdConfig = Field(default_factory=lambda: EtcdConfig())
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig())
    destination: list[DestinationConfig] = Field(
        min_length=1, description="one or more places each snapshot is shipped to"
    )
    retention: RetentionConfig = Field(default_factory=lambda: RetentionConfig())
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig())
    drill: DrillConfig = Field(default_factory=lambda: DrillConfig())
    restore: RestoreConfig = Field(default_factory=lambda: RestoreConfig())
    notify: list[NotifyConfig] = Field(
        default_factory=list,
        description="who hears about each backup cycle and drill, without Prometheus",
    )
    coordination: Literal["leader", "none"] | None = Field(
        None,
        description='"leader": of several hosts backing up one cluster, the one whose member '
        'leads takes each snapshot; "none": every host takes its own. Default: "leader" '
        "when etcd.local_endpoint is set",
    )

    @property
    def coordinated(self) -> bool:
        mode = self.coordination or ("leader" if self.etcd.local_endpoint else "none")
        return mode == "leader"

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


DESTINATION_TYPES = ("local", "s3")
NOTIFY_TYPES = ("ping", "webhook")


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
