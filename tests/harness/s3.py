"""moto's standalone S3 server on loopback, optionally behind TLS, stopped by PID."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from .etcd import free_port, stop_process
from .tls import TLSFiles

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
REGION = "us-east-1"


@dataclass
class MotoServer:
    workdir: Path
    tls: TLSFiles | None = None
    port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = "localhost" if self.tls else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        command = [
            str(Path(sys.executable).with_name("moto_server")),
            "-H", "127.0.0.1",
            "-p", str(self.port),
        ]  # fmt: skip
        if self.tls is not None:
            command += ["-c", str(self.tls.server_cert), "-k", str(self.tls.server_key)]
        env = {**os.environ, **{k.upper(): v for k, v in CREDENTIALS.items()}}
        with (self.workdir / "moto.log").open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        plain = f"http://127.0.0.1:{self.port}/moto-api/"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                log = (self.workdir / "moto.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"moto_server exited:\n{log}")
            try:
                if self.tls is None:
                    urllib.request.urlopen(plain, timeout=1).close()
                else:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("moto_server did not answer")

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, timeout=10)
        self._process = None

    def reset(self) -> None:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset", method="POST", data=b""
        )
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
        urllib.request.urlopen(request, timeout=10, context=context).close()

    def client(self, endpoint_url: str | None = None, **config: Any) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name=REGION,
            verify=str(self.tls.ca) if self.tls else None,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                **config,
            ),
            **CREDENTIALS,
        )


def start_moto(workdir: Path, tls: TLSFiles | None = None) -> MotoServer:
    server = MotoServer(workdir, tls)
    server.start()
    return server


def make_bucket(client: Any, name: str, *, object_lock: bool = False) -> None:
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)


def s3_environment() -> dict[str, str]:
    """What a process needs in its environment to reach the test server with boto3."""
    return {
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
