"""One job at a time: a job that must not queue is skipped, one that may wait takes the next
turn, and a waiter for the running job gives up at its deadline."""

from __future__ import annotations

import threading
import time

from etcd_backupd.overlap import OneAtATime


def test_a_job_that_must_not_queue_is_skipped_while_another_runs() -> None:
    turns = OneAtATime()
    with turns.turn(wait=False) as first:
        assert first and turns.busy
        with turns.turn(wait=False) as second:
            assert not second
        assert turns.busy  # the skipped job did not free the slot
    assert not turns.busy
    with turns.turn(wait=False) as later:
        assert later


def test_a_job_that_may_wait_runs_after_the_running_one() -> None:
    turns = OneAtATime()
    order: list[str] = []
    started = threading.Event()

    def drill() -> None:
        started.set()
        with turns.turn(wait=True) as mine:
            assert mine
            order.append("drill")

    with turns.turn(wait=False):
        waiting = threading.Thread(target=drill)
        waiting.start()
        started.wait()
        time.sleep(0.1)
        order.append("backup")
    waiting.join(timeout=5)
    assert order == ["backup", "drill"]


def test_waiting_for_the_running_job_ends_at_the_deadline_or_when_it_ends() -> None:
    turns = OneAtATime()
    assert turns.wait_idle(0)
    release = threading.Event()

    def backup() -> None:
        with turns.turn(wait=False):
            release.wait()

    running = threading.Thread(target=backup)
    running.start()
    while not turns.busy:
        time.sleep(0.01)
    began = time.monotonic()
    assert not turns.wait_idle(0.2)
    assert time.monotonic() - began < 2
    release.set()
    assert turns.wait_idle()
    running.join(timeout=5)


def test_a_failing_job_frees_the_slot() -> None:
    turns = OneAtATime()
    try:
        with turns.turn(wait=False):
            raise RuntimeError("the cycle failed")
    except RuntimeError:
        pass
    assert not turns.busy and turns.wait_idle(0)
