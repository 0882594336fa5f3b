"""The [[destination]] tables: a local directory or an S3 bucket, each with its own compression,
encryption, retention, schedule and bounds."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .config_base import NAME_RE, NAME_RULE, ConfigPath, Strict, shown, url_problem, validate_cron
from .config_schedule import RetentionConfig
from .encryption import Recipient, parse_recipient, parse_recipients_file
from .errors import ConfigError
from .formats import Compression, StoredFormat

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

MIB = 1024 * 1024


class EncryptionConfig(Strict):
    """age encryption of what a destination stores: to every recipient listed here and in
    recipients_file. Only their public keys are needed here; reading a backup back takes an
    identity (--identity, ETCD_BACKUPD_AGE_IDENTITY_FILE, [drill] identity_file)."""

    recipients: list[str] = Field(
        default_factory=list,
        description="age recipients: X25519 (age1...), ssh-ed25519 or ssh-rsa public keys.",
        examples=[["age1..."]],
    )
    recipients_file: ConfigPath | None = Field(
        None,
        description="A file of recipients, one a line, as `age -R` reads it (# comments).",
        examples=["/etc/etcd-backupd/recipients.txt"],
    )

    @field_validator("recipients")
    @classmethod
    def _each_a_recipient(cls, recipients: list[str]) -> list[str]:
        for index, text in enumerate(recipients):
            try:
                parse_recipient(text)
            except ValueError as exc:
                raise ValueError(f"recipients[{index}]: {exc}") from None
        return [text.strip() for text in recipients]

    @model_validator(mode="after")
    def _recipients_file_holds_recipients(self) -> EncryptionConfig:
        found = self._file_recipients()
        if not self.recipients and not found:
            raise ValueError(
                "encryption needs at least one recipient (recipients or recipients_file)"
            )
        return self

    def _file_recipients(self) -> list[str]:
        """The recipients recipients_file holds, each checked; ValueError naming the file."""
        path = self.recipients_file
        if path is None:
            return []
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"recipients_file: cannot read {path}: {reason}") from None
        try:
            parse_recipients_file(text)
        except ValueError as exc:
            raise ValueError(f"recipients_file: {path}, {exc}") from None
        return [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]

    def public_keys(self) -> list[str]:
        """Every recipient, as the manifest records it: public keys only, in order, once each."""
        try:
            found = self._file_recipients()
        except ValueError as exc:
            raise ConfigError(f"encryption: {exc}") from None
        return list(dict.fromkeys([*self.recipients, *found]))

    def parsed(self) -> list[Recipient]:
        return [parse_recipient(text) for text in self.public_keys()]


class _DestinationBase(Strict):
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
    encryption: EncryptionConfig | None = Field(
        None,
        description="Encrypt what is stored here with age, after compression, to every "
        "recipient: X25519 (age1...), ssh-ed25519 or ssh-rsa public keys in recipients and "
        "in recipients_file (one a line; either key or both). Stored as "
        "<name>.db[.zst|.gz].age, which `age -d -i KEY FILE` opens; the manifest records the "
        "recipients' public keys. Unset: stored in plaintext.",
        examples=[
            {"recipients": ["age14avttazr7ufn04u3uue4umg4ah3qac30mjz5mudrdyayc852yyjqrvk6mh"]}
        ],
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
        if not NAME_RE.match(name):
            raise ValueError(NAME_RULE)
        return name

    @property
    def stored_format(self) -> StoredFormat:
        return StoredFormat(self.compression, encrypted=self.encryption is not None)


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
        problem = url_problem(url) if url is not None else None
        if problem:
            raise ValueError(f"{shown(url or '')} {problem}")
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
