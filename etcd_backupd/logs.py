"""Log output: readable lines for people, one JSON object per line for journald and Kubernetes."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def error_line(fmt: LogFormat, text: str, now: datetime) -> str:
    """A line a command prints on stderr besides the log: plain, or with --log-format json one
    JSON object like every log line, so that a log reader parses every line of the run."""
    text = " ".join(text.splitlines())
    if fmt != "json":
        return text
    entry = {
        "time": now.isoformat(timespec="milliseconds"),
        "level": "error",
        "logger": "etcd_backupd",
        "message": text,
    }
    return json.dumps(entry)


def setup_logging(fmt: LogFormat, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # gRPC and the AWS SDK narrate every connection at INFO; keep the log about backups
    for noisy in ("grpc", "botocore", "boto3", "urllib3", "s3transfer", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
