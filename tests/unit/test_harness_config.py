"""The tests' TOML writer says what they mean: the parser reads back the same data."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.harness.cli import config_data, local_destination, toml_document


def test_a_config_reads_back_as_written(tmp_path: Path) -> None:
    data = config_data(
        tmp_path,
        ["http://127.0.0.1:2379"],
        etcd={"dial_timeout": 1.0, "cluster_name": "caf\xe9 'prod'"},
        destinations=[
            local_destination(tmp_path / "b", retention={"keep_last": 2}),
            {"name": "s3", "type": "s3", "bucket": "b", "part_size": 5 << 20},
        ],
        schedule={"cron": "* * * * *", "catch_up": False},
        notify=[{"type": "ping", "url": "http://x/p"}],
    )
    assert tomllib.loads(toml_document(data)) == data
    assert data["state_dir"] == str(tmp_path / "state")
    assert data["destination"][0]["path"] == str(tmp_path / "b")
