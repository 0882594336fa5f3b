"""The progress line of a snapshot stream."""

from __future__ import annotations

from etcd_backupd.etcd import describe_progress

MIB = 1024 * 1024


def test_progress_says_bytes_share_rate_and_time_left() -> None:
    line = describe_progress(30 * MIB, 10.0, 120 * MIB)
    assert line == "30.0 MiB of 120.0 MiB (25%) at 3.0 MiB/s, about 30 s left"


def test_progress_past_the_reported_size_and_without_one() -> None:
    assert describe_progress(130 * MIB, 10.0, 120 * MIB) == (
        "130.0 MiB of 120.0 MiB (100%) at 13.0 MiB/s, past the size the member reported"
    )
    assert describe_progress(5 * MIB, 2.0, 0) == "5.0 MiB at 2.5 MiB/s"
    assert describe_progress(0, 10.0, 120 * MIB) == "0.0 MiB of 120.0 MiB (0%) at 0.0 MiB/s"
