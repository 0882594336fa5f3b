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
from typing import Annotated, Any, Literal, get_args
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
    host = parts.hostname
    # Docker and Compose service names may hold '_', which resolves there
    if not _valid_host(f"[{host}]" if ":" in host else host.replace("_", "-")):
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


def restore_url_problem(name: str, url: str) -> str | None:
    """Why the [restore] tables, and restore-plan's --member and --client-url, refuse member
    `name`'s URL, or None: it must be an http(s)://host:port URL without credentials."""
    problem = _url_problem(url)
    return f"{name}: {_shown(url)} {problem}" if problem else None


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
        DEFAULT_CRON,
        description="When `etcd-backupd run` takes a backup: a 5-field cron expression (minute "
        'hour day month weekday) or a macro such as "@daily", or a list of them, read as cron '
        "and Kubernetes read them (weekday 0 and 7 are Sunday; with both day fields restricted, "
        "either one matching is enough). `etcd-backupd check-config` prints the next three fire "
        "times.",
    )
    timezone: str = Field("UTC", description="Time zone the cron expressions are read in.")
    jitter: float = Field(
        0.0,
        ge=0,
        le=DAY,
        description="Wait up to this many seconds after each fire time, at random, so a fleet "
        "does not hit S3 at once.",
    )
    retry_attempts: int = Field(
        3,
        ge=0,
        le=100,
        description="A failed cycle is retried this many times before the next fire time.",
    )
    retry_backoff: float = Field(
        60.0,
        gt=0,
        le=DAY,
        description="Seconds before the first retry of a failed cycle, doubled for each further "
        "retry.",
    )
    catch_up: bool = Field(
        True,
        description="At start, back up at once if the newest backup is older than the last fire "
        "time.",
    )
    shutdown_timeout: float = Field(
        300.0,
        ge=0,
        le=DAY,
        description="On SIGTERM or SIGINT, a running cycle may take this many seconds to finish "
        "before it is aborted cleanly (no partial file, no multipart upload left).",
    )
    standby_grace: float = Field(
        120.0,
        ge=0,
        le=DAY,
        description="With coordination, seconds a standby host waits for the leader's "
        "snapshot of a fire time before it takes one itself.",
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
    """Which snapshots survive pruning (restic `forget` semantics). No rule set: keep
    everything."""

    keep_last: int | None = Field(
        None, ge=0, le=1_000_000, description="Keep the N newest snapshots.", examples=[6]
    )
    keep_hourly: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Keep the newest snapshot in each of the last N hours.",
        examples=[24],
    )
    keep_daily: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Keep the newest snapshot in each of the last N days.",
        examples=[7],
    )
    keep_weekly: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Keep the newest snapshot in each of the last N weeks.",
        examples=[4],
    )
    keep_monthly: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Keep the newest snapshot in each of the last N months.",
        examples=[12],
    )
    keep_yearly: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Keep the newest snapshot in each of the last N years.",
        examples=[2],
    )
    keep_within: str | None = Field(
        None,
        description="Keep all snapshots this close to the newest one.",
        examples=["14d"],
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
    name: str = Field(
        max_length=64,
        description="Name used in logs, metrics and --destination (letters, digits, '.', '_', "
        "'-').",
    )
    compression: Compression = Field(
        "none",
        description='"none" stores the file exactly as `etcdutl snapshot restore` takes it; '
        '"zstd" or "gzip" compress while storing (the manifest keeps both sizes and the SHA-256 '
        "of the uncompressed snapshot, and `etcd-backupd verify` reads compressed files too).",
    )
    retention: RetentionConfig | None = Field(
        None,
        description="A [destination.retention] table (same keys as [retention]) overrides the "
        "global policy for this destination only.",
    )
    cron: str | list[str] | None = Field(
        None,
        description="This destination's own schedule (e.g. hourly here, daily to S3); the global "
        "one when unset. One snapshot is taken per fire time and shipped to every destination "
        "due then.",
        examples=["0 * * * *"],
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
    """A directory on this host or a mounted filesystem. Created (mode 0700) if missing;
    snapshots are written mode 0600 since they hold every Secret of the cluster."""

    type: Literal["local"]
    path: ConfigPath = Field(
        description="Directory holding snapshots and their manifests.",
        examples=["/var/backups/etcd"],
    )


class S3Destination(_DestinationBase):
    """An S3 bucket, on AWS or any S3-compatible store (MinIO, Ceph RGW, ...)."""

    type: Literal["s3"]
    bucket: str = Field(min_length=3, description="Bucket name.", examples=["etcd-backups"])
    prefix: str = Field(
        "",
        description="Every object the tool writes, lists or deletes lives under the prefix; it "
        'must end with "/".',
    )
    region: str | None = Field(
        None, description="Bucket region; boto3's default chain if unset.", examples=["us-east-1"]
    )
    endpoint_url: str | None = Field(
        None,
        description="An S3-compatible store (MinIO, Ceph RGW); AWS when unset.",
        examples=["https://minio.internal:9000"],
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto",
        description='"path" suits most S3-compatible stores; "auto" lets boto3 choose.',
    )
    ca_bundle: ConfigPath | None = Field(
        None,
        description="CA bundle to trust for endpoint_url.",
        examples=["/etc/ssl/certs/minio-ca.pem"],
    )
    storage_class: Literal[STORAGE_CLASSES] | None = Field(  # type: ignore[valid-type]
        None,
        description="Storage class of each object (e.g. STANDARD_IA, GLACIER_IR).",
        examples=["STANDARD_IA"],
    )
    sse: Literal["AES256", "aws:kms"] | None = Field(
        None,
        description='Server-side encryption: "AES256" or "aws:kms" (with sse_kms_key_id).',
        examples=["AES256"],
    )
    sse_kms_key_id: str | None = Field(
        None,
        description='KMS key for sse = "aws:kms".',
        examples=["arn:aws:kms:us-east-1:111122223333:key/..."],
    )
    object_lock_days: int | None = Field(
        None,
        gt=0,
        le=36500,
        description="Object Lock retention on each object (the bucket must have Object Lock "
        "enabled); locked objects are skipped by pruning until their retention ends.",
        examples=[30],
    )
    object_lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = Field(
        "COMPLIANCE", description="Object Lock mode with object_lock_days."
    )
    delete_versions: bool = Field(
        False,
        description="In a bucket with versioning, a delete leaves every version readable. true: "
        "pruning deletes every version and delete marker of what it deletes. false: add a "
        "lifecycle rule with NoncurrentVersionExpiration (see README) so old versions expire.",
    )
    part_size: int = Field(
        8 * MIB,
        ge=5 * MIB,
        le=5 * 1024 * MIB,
        description="Multipart upload part size in bytes (>= 5 MiB). Memory use is about "
        "part_size x (max_concurrency + 1).",
    )
    max_concurrency: int = Field(
        8, ge=1, le=64, description="Multipart upload parts in flight at once."
    )
    max_attempts: int = Field(
        8,
        ge=1,
        le=30,
        description="Attempts per request on throttling (503 SlowDown) and 5xx errors, with "
        "backoff.",
    )
    connect_timeout: float = Field(
        10.0, gt=0, le=300, description="Seconds to wait for a connection to the endpoint."
    )
    read_timeout: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds to wait for the answer to each request (every attempt).",
    )
    stall_timeout: float = Field(
        120.0,
        gt=0,
        le=86400,
        description="A destination whose upload finishes no part for this many seconds is given "
        "up for this cycle alone: the other destinations still get the snapshot, and the run "
        "says which one failed.",
    )
    deadline: float = Field(
        3600.0,
        gt=0,
        le=7 * 86400,
        description="Seconds after the cycle started by which this destination must be done, or "
        "it is given up for this cycle alone, as with stall_timeout.",
    )
    access_key_id: str | None = Field(
        None,
        description="Static credentials (with secret_access_key_file). Unset: boto3's default "
        "chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, AWS_PROFILE, "
        "web identity / IRSA, instance role).",
        examples=["AKIA..."],
    )
    secret_access_key_file: ConfigPath | None = Field(
        None,
        description="File holding the secret key for access_key_id.",
        examples=["/etc/etcd-backupd/s3-secret"],
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

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        return validate_cron(cron)


class RestoreConfig(_Strict):
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
            if not _NAME_RE.match(name):
                raise ValueError(f"member name {name!r} {_NAME_RULE}")
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


class _NotifyBase(_Strict):
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
        problem = _url_problem(url)
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


class Config(_Strict):
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
