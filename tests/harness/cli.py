"""The etcd-backupd command line as an operator runs it, in a child process, and the TOML
configs the tests hand it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.harness.etcd import EtcdCluster
from tests.harness.polling import wait_until

CLI = [sys.executable, "-m", "etcd_backupd.cli"]
# the longest any single command of the suite takes is a drill or restore of a few MB; a hang
# must still fail the test rather than the CI job
DEFAULT_TIMEOUT = 300.0


def cli_environment(
    env: Mapping[str, str] | None = None, *, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`base` (this process's environment unless given) with `env` on top."""
    return {**(os.environ if base is None else base), **(env or {})}


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """`etcd-backupd ARGS`, its output captured as text; a non-zero exit is for the test to
    judge."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=cli_environment(env, base=base_env),
    )


def run_cli_bytes(
    *args: str, timeout: float = DEFAULT_TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    """As run_cli, for commands whose output is compared byte for byte."""
    return subprocess.run([*CLI, *args], capture_output=True, check=False, timeout=timeout)


def start_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> subprocess.Popen[str]:
    """`etcd-backupd ARGS` left running, for a test that signals or races it."""
    return subprocess.Popen(
        [*CLI, *args], stdout=stdout, stderr=stderr, text=True, env=cli_environment(env)
    )


class Running:
    """`etcd-backupd run` in the background, its stderr in a log file the test reads."""

    def __init__(self, config: Path, log: Path, env: Mapping[str, str] | None = None) -> None:
        self.log = log
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [*CLI, "run", "--config", str(config)], stderr=stderr, env=cli_environment(env)
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(
        self, condition: Callable[[], bool], timeout: float, message: Callable[[], str]
    ) -> None:
        """Until `condition` holds; a daemon that exited before fails the test at once."""

        def met() -> bool:
            if condition():
                return True
            assert self.process.poll() is None, f"the daemon exited:\n{self.text()}"
            return False

        wait_until(met, timeout, message=message)

    def wait_for(self, needle: str, timeout: float = 30) -> None:
        self.wait(
            lambda: needle in self.text(),
            timeout,
            lambda: f"never logged {needle!r}:\n{self.text()}",
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def local_destination(path: Path, name: str = "local", **settings: Any) -> dict[str, Any]:
    return {"name": name, "type": "local", "path": str(path), **settings}


def s3_destination(
    endpoint: str, bucket: str, *, prefix: str = "prod/", name: str = "s3", **settings: Any
) -> dict[str, Any]:
    """An S3 destination on a test server (moto, or a fault proxy in front of it)."""
    return {
        "name": name,
        "type": "s3",
        "bucket": bucket,
        "prefix": prefix,
        "endpoint_url": endpoint,
        "region": "us-east-1",
        **settings,
    }


def config_data(
    directory: Path,
    cluster: EtcdCluster | Sequence[str] | None = None,
    *,
    etcd: Mapping[str, Any] | None = None,
    destinations: Sequence[Mapping[str, Any]] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A config whose state is in DIRECTORY/state, reading `cluster` (its members or its
    endpoints), with `etcd` settings on top, storing to `destinations` (by default one local
    directory, DIRECTORY/backups); `sections` are the other tables and top-level settings, a
    state_dir among them replacing the default."""
    endpoints = cluster.endpoints if isinstance(cluster, EtcdCluster) else cluster
    etcd_table = {
        **({"endpoints": list(endpoints)} if endpoints is not None else {}),
        **(etcd or {}),
    }
    if destinations is None:
        destinations = [local_destination(directory / "backups")]
    return {
        "state_dir": str(directory / "state"),
        "etcd": etcd_table,
        **sections,
        "destination": [dict(d) for d in destinations],
    }


def write_config(
    directory: Path,
    cluster: EtcdCluster | Sequence[str] | None = None,
    *,
    name: str = "config.toml",
    mode: int | None = None,
    etcd: Mapping[str, Any] | None = None,
    destinations: Sequence[Mapping[str, Any]] | None = None,
    **sections: Any,
) -> Path:
    """config_data written to DIRECTORY/NAME; `mode` for a test that needs a root-only file."""
    data = config_data(directory, cluster, etcd=etcd, destinations=destinations, **sections)
    return write_toml(directory / name, data, mode=mode)


def write_toml(path: Path, data: Mapping[str, Any], *, mode: int | None = None) -> Path:
    path.write_text(toml_document(data))
    if mode is not None:
        path.chmod(mode)
    return path


def toml_document(data: Mapping[str, Any]) -> str:
    """TOML for the plain data a config holds: strings, paths, numbers, booleans, lists of
    those, tables and arrays of tables."""
    lines: list[str] = []
    _table(data, "", lines)
    return "\n".join(lines) + "\n"


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(data: Mapping[str, Any], prefix: str, lines: list[str]) -> None:
    nested = {k: v for k, v in data.items() if isinstance(v, Mapping) or _is_table_array(v)}
    # a JSON string, number, boolean or array is TOML too
    lines += [f"{k} = {json.dumps(v, default=str)}" for k, v in data.items() if k not in nested]
    for key, value in nested.items():
        if isinstance(value, Mapping):
            lines.append(f"[{prefix}{key}]")
            _table(value, f"{prefix}{key}.", lines)
            continue
        for item in value:
            lines.append(f"[[{prefix}{key}]]")
            _table(item, f"{prefix}{key}.", lines)
