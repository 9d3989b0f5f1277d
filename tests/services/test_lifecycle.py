"""Status changes and events: what is stored for an instance stays small, whatever its logs say."""

from __future__ import annotations

from labhub.models import Instance, Status
from labhub.services import lifecycle, views
from labhub.services.lifecycle import note, transition

MiB = 1024 * 1024
WHAT = "failed to start: exited with code 3"


class Session:
    """What :func:`transition` and :func:`note` use of an ``AsyncSession``."""

    def __init__(self) -> None:
        self.added: list[object] = []
        self.info: dict[str, list] = {}

    def add(self, obj: object) -> None:
        self.added.append(obj)


def starting() -> Instance:
    return Instance(id="i1", owner_id=1, status=Status.STARTING, message="")


def test_a_huge_log_tail_is_not_stored_as_the_failure_message():
    """The attack: an instance's 20 MiB log tail becomes its message and event, and every listing returns it."""
    message = WHAT + "\n--- last log lines ---\n" + "x" * (20 * MiB) + "\nthe end"
    inst = starting()
    event = transition(Session(), inst, Status.FAILED, reason="exited", message=message)
    for stored in (inst.message, event.message):
        assert len(stored.encode()) <= 8 * 1024
        what, lines = views.split_failure(stored)
        assert what == WHAT  # the page still says what happened
        assert lines[-1] == "the end" and "cut" in lines[0]


def test_notes_and_messages_without_log_lines_are_bounded_too():
    inst = starting()
    event = note(Session(), inst, reason="waiting", message="y" * MiB + "END")
    assert len(event.message.encode()) <= lifecycle.MESSAGE_LIMIT
    assert event.message.startswith(lifecycle.MESSAGE_CUT) and event.message.endswith("END")
    plain = transition(Session(), inst, Status.RUNNING, reason="ready", message="z" * 9000)
    assert len(plain.message.encode()) <= lifecycle.MESSAGE_LIMIT and plain.message == inst.message


def test_short_messages_are_kept_as_they_are():
    for message in ("", "ready after 0.4 s", WHAT + lifecycle.LOG_MARKER + "boom\n" * 100, "é" * 4096):
        assert lifecycle.bound_message(message) == message
    assert lifecycle.LOG_MARKER == views.LOG_MARKER  # the marker the pages split on


def test_bounded_messages_are_valid_utf8_without_nul():
    """PostgreSQL refuses NUL characters and invalid UTF-8 in text columns."""
    for tail in ("€" * 10_000, "é" * 10_001, "\x00" * 5 + "x" * 9000, "\udcff" * 9000 + "ok"):
        for limit in (8192, 8191, 8190, 1000):
            got = lifecycle.bound_message(WHAT + lifecycle.LOG_MARKER + tail, limit=limit)
            encoded = got.encode("utf-8")  # no lone surrogates left
            assert len(encoded) <= limit and "\x00" not in got and "\ufffd" not in got
            assert views.split_failure(got)[0] == WHAT
    assert lifecycle.bound_message("a\x00b") == "ab"
    assert lifecycle.bound_message("\x00" * 9000 + "tail") == lifecycle.MESSAGE_CUT + "tail"


def test_a_long_head_is_cut_at_its_end():
    got = lifecycle.bound_message("h" * 50_000 + lifecycle.LOG_MARKER + "last line")
    what, lines = views.split_failure(got)
    assert what.startswith("hhh") and what.endswith("…") and len(what.encode()) <= lifecycle.MESSAGE_HEAD_LIMIT
    assert lines == ["last line"]
