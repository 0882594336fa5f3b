"""Which standby takes a fire time over first: pure ranking by member ID."""

from __future__ import annotations

from etcd_backupd.coordination import standby_rank
from etcd_backupd.etcd import MemberStatus


def status(member_id: int, leader: int) -> MemberStatus:
    return MemberStatus(f"http://m{member_id}", member_id, f"m{member_id}", leader, 1, "3.5", 0)


def test_standby_rank_counts_live_followers_by_member_id() -> None:
    live = [status(30, 20), status(20, 20), status(10, 20)]
    assert standby_rank(10, live) == 0
    assert standby_rank(30, live) == 1
    assert standby_rank(None, live) == 2  # the local member does not answer: last
    assert standby_rank(40, live) == 2  # not among the live ones (down or partitioned): last
