"""One listing of the destinations: ours only, and a destination that fails is set apart."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from etcd_backupd.destinations.held import UNKNOWN_CLUSTER, every_cluster, list_held
from etcd_backupd.errors import DestinationError
from etcd_backupd.manifest import Cluster, Manifest
from tests.harness.backups import CLUSTER_IDS, make_manifest

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
PROD = Cluster("prod", CLUSTER_IDS["prod"])
OURS = make_manifest("prod", NOW - timedelta(hours=1))
THEIRS = make_manifest("other", NOW - timedelta(hours=2))


def unreachable() -> list[Manifest]:
    raise DestinationError("destination 's3': cannot list: timed out")


def test_a_failing_destination_is_warned_about_and_the_others_still_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        listing = list_held(
            {"disk": lambda: [OURS, THEIRS], "s3": unreachable}, PROD.owns, context="standby: "
        )
    assert listing.held == {"disk": [OURS]}
    assert listing.failed == {"s3": "destination 's3': cannot list: timed out"}
    assert caplog.messages == [
        "standby: cannot list destination s3: destination 's3': cannot list: timed out"
    ]


def test_a_failure_the_caller_reports_itself_is_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        listing = list_held(
            {"s3": unreachable, "disk": lambda: [THEIRS]}, every_cluster, warn=False
        )
    assert listing.held == {"disk": [THEIRS]}
    assert set(listing.failed) == {"s3"}
    assert caplog.messages == []


def test_no_destination_is_listed_while_the_cluster_is_unknown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listed: list[str] = []

    def disk() -> list[Manifest]:
        listed.append("disk")
        return [OURS]

    with caplog.at_level(logging.WARNING):
        listing = list_held({"disk": disk}, None)
    assert listed == [] and listing.held == {}
    assert listing.failed == {"disk": UNKNOWN_CLUSTER}
    assert caplog.messages == [f"cannot list destination disk: {UNKNOWN_CLUSTER}"]
