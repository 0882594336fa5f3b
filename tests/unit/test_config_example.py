"""`config.example.toml` is what the models say: generated, valid, and complete."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from etcd_backupd.cli import main as cli_main
from etcd_backupd.config import (
    DESTINATION_TYPES,
    NOTIFY_TYPES,
    Config,
    NotifyConfig,
    parse_config,
    union_members,
)
from etcd_backupd.config_destinations import DestinationConfig
from etcd_backupd.config_example import render

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.toml"


def test_committed_example_is_the_generators_output() -> None:
    assert EXAMPLE.read_text() == render(), (
        "config.example.toml is stale: python -m etcd_backupd.config_example > config.example.toml"
    )


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _models(annotation)
    return found


def test_every_key_of_every_model_is_in_the_example() -> None:
    text = render()
    variants = [*union_members(DestinationConfig), *union_members(NotifyConfig)]
    tables = {"destination", "notify", *_tables()}
    for model in [*_models(Config), *variants]:
        for name in model.model_fields.keys() - tables - {"retention"}:
            assert re.search(rf"^(# )?{name} = ", text, re.M), f"{model.__name__}.{name}"


def _tables() -> set[str]:
    return {
        name
        for name, field in Config.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }


def test_each_destination_and_notify_type_has_an_example_block() -> None:
    text = render()
    assert DESTINATION_TYPES == ("local", "s3")
    assert NOTIFY_TYPES == ("ping", "webhook")
    for table, tags in (("destination", DESTINATION_TYPES), ("notify", NOTIFY_TYPES)):
        for tag in tags:
            assert re.search(
                rf"^(# )?\[\[{table}\]\]\n(# )?(name = .*\n)?(# )?type = \"{tag}\"$", text, re.M
            ), tag


def test_example_is_valid_with_its_local_destination_only() -> None:
    config = parse_config(tomllib.loads(render()))
    assert [d.type for d in config.destination] == [DESTINATION_TYPES[0]]
    assert config.retention.keep_last is None
    assert config.notify == []


def test_every_commented_block_is_valid_when_uncommented() -> None:
    """Uncommenting an example line yields a config the daemon accepts, except where two
    examples exclude each other by design."""
    text = render()
    uncommented = re.sub(r"^# (?=[a-z_]+ = |\[)", "", text, flags=re.M)
    data = tomllib.loads(uncommented)
    # access keys and KMS are shown as placeholders that go with other settings
    data["destination"][1]["sse"] = "aws:kms"
    config = parse_config(data)
    assert [d.type for d in config.destination] == list(DESTINATION_TYPES)
    assert [n.type for n in config.notify] == list(NOTIFY_TYPES)


def test_check_config_accepts_the_example_with_its_destination_filled_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backups = tmp_path / "backups"
    text = render().replace('path = "/var/backups/etcd"', f'path = "{backups}"')
    text = text.replace(
        '# state_dir = "/var/lib/etcd-backupd"', f'state_dir = "{tmp_path / "state"}"'
    )
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(0o600)
    assert cli_main(["check-config", "--config", str(path)]) == 0
    assert f"{path}: valid" in capsys.readouterr().out
