"""What every section of the configuration shares: the strict model base, the path type,
name and URL rules, and the cron check."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .cron import Cron

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME_RULE = "may hold only letters, digits, '.', '_' and '-'"


def url_problem(url: str) -> str | None:
    """What is wrong with an http(s)://host:port URL, or None when nothing is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not an http(s)://host:port URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s)://host:port URL"
    host = parts.hostname
    # Docker and Compose service names may hold '_', which resolves there
    if not valid_host(f"[{host}]" if ":" in host else host.replace("_", "-")):
        return "is not an http(s)://host:port URL"
    if "@" in parts.netloc:
        return "holds credentials (user:password@), which are never sent from there"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return "has an invalid port"
    return None


def shown(url: str) -> str:
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
HOST_RE = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def validate_cron(expression: str) -> str:
    """Check a cron expression as the daemon reads it (see `cron.py`), refusing one that never
    fires."""
    Cron.parse(expression)
    return expression


def valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # a dotted quad that is no address (999.999.1.1) is no host name either
        return not host.replace(".", "").isdigit() and HOST_RE.match(host) is not None
    return True
