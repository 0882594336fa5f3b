"""The command's exit: output flushed, main's code kept, the interpreter's teardown skipped only
when nothing else is still running."""

from __future__ import annotations

import io
import sys
import threading

import pytest

from etcd_backupd import cli


class Exited(Exception):
    def __init__(self, code: int, written: bytes) -> None:
        self.code = code
        self.written = written


def buffered_stdout(monkeypatch: pytest.MonkeyPatch) -> tuple[io.BytesIO, io.TextIOWrapper]:
    """Set inside the test, not in a fixture: pytest swaps sys.stdout between the two, and the
    dropped wrapper would close the buffer."""
    sink = io.BytesIO()
    wrapper = io.TextIOWrapper(sink, write_through=False)
    monkeypatch.setattr(sys, "stdout", wrapper)
    return sink, wrapper


def test_output_is_flushed_before_the_fast_exit_with_mains_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stdout, _wrapper = buffered_stdout(monkeypatch)

    def main() -> int:
        print("snapshot stored")
        return 3

    def fast_exit(code: int) -> None:
        raise Exited(code, stdout.getvalue())

    monkeypatch.setattr(cli, "main", main)
    monkeypatch.setattr(cli.os, "_exit", fast_exit)
    with pytest.raises(Exited) as exited:
        cli.entry()
    assert exited.value.code == 3
    assert exited.value.written == b"snapshot stored\n"


def test_a_thread_still_at_work_gets_the_ordinary_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    monkeypatch.setattr(cli, "main", lambda: 0)
    monkeypatch.setattr(cli.os, "_exit", lambda code: pytest.fail("the fast exit ran"))
    try:
        with pytest.raises(SystemExit) as exited:
            cli.entry()
    finally:
        release.set()
        worker.join()
    assert exited.value.code == 0


def test_output_that_cannot_be_flushed_gets_the_ordinary_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class ClosedPipe(io.StringIO):
        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    monkeypatch.setattr(cli, "main", lambda: 2)
    monkeypatch.setattr(cli.os, "_exit", lambda code: pytest.fail("the fast exit ran"))
    with pytest.raises(SystemExit) as exited:
        cli.entry()
    assert exited.value.code == 2
