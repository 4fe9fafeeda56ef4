"""The device's durable outbox on its own: numbering, restart, acks, the replay window."""

import json
import sqlite3
import subprocess
import sys
import textwrap

from firmware_sim.outbox import Outbox


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_messages_are_numbered_in_order_and_survive_a_reopen(tmp_path):
    box = Outbox(tmp_path / "o.db")
    assert [box.add(b"m%d" % i, i).seq for i in range(3)] == [1, 2, 3]
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert [(m.seq, m.payload, m.samples) for m in again] == [
        (1, b"m0", 0), (2, b"m1", 1), (3, b"m2", 2)]
    assert again.add(b"next", 1).seq == 4  # a restarted device never reuses a number


def test_an_acked_message_leaves_the_queue_and_its_number_is_not_reused(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for _ in range(3):
        box.add(b"x", 1)
    box.acked(1)
    box.acked(3)  # out of order: only that one goes
    assert [m.seq for m in box] == [2]
    box.acked(2)
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert len(again) == 0 and again.add(b"y", 1).seq == 4


def test_the_first_number_comes_from_an_older_state_file_only_once(tmp_path):
    box = Outbox(tmp_path / "o.db", first_seq=41)
    assert box.add(b"x", 1).seq == 41
    box.close()
    assert Outbox(tmp_path / "o.db", first_seq=7).add(b"y", 1).seq == 42


def test_replay_returns_acked_messages_in_the_window_only(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "o.db", replay_s=60, replay_max=1000, clock=clock)
    for i in range(1, 11):
        box.add(b"m%d" % i, 1)
    for seq in range(1, 9):  # 9 and 10 still pending
        box.acked(seq)
    got = box.replay([(2, 3), (5, 5), (8, 10)])
    assert [(m.seq, m.payload) for m in got] == [(2, b"m2"), (3, b"m3"), (5, b"m5"),
                                                 (8, b"m8")]
    assert [m.seq for m in box.replay([(1, 100)], limit=3)] == [1, 2, 3]
    clock.t += 61
    box.trim()
    assert box.replay([(1, 100)]) == []  # older than the window: gone
    assert [m.seq for m in box] == [9, 10]  # pending ones are never trimmed


def test_the_replay_window_is_bounded_in_size(tmp_path):
    box = Outbox(tmp_path / "o.db", replay_max=5)
    for _ in range(120):
        box.acked(box.add(b"x", 1).seq)  # trims itself every 50 acks
    box.trim()
    assert [m.seq for m in box.replay([(1, 200)])] == [116, 117, 118, 119, 120]
    rows = sqlite3.connect(tmp_path / "o.db").execute("SELECT count(*) FROM outbox")
    assert rows.fetchone()[0] == 5


def test_a_message_added_survives_the_process_being_killed(tmp_path):
    # A child adds messages and then dies without closing anything (os._exit, like SIGKILL
    # for our purposes: no Python cleanup runs). Every add that returned is on disk.
    script = textwrap.dedent(f"""
        import os, sys
        from firmware_sim.outbox import Outbox
        box = Outbox({str(tmp_path / "o.db")!r})
        for i in range(25):
            box.add(b"r%d" % i, 1)
        box.acked(1)
        sys.stdout.write("added\\n"); sys.stdout.flush()
        os._exit(9)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 9 and done.stdout == "added\n", done.stderr
    box = Outbox(tmp_path / "o.db")
    assert [m.seq for m in box] == list(range(2, 26))
    assert box.next_seq == 26
    assert json.dumps([m.payload.decode() for m in box][:2]) == '["r1", "r2"]'


def test_a_new_epoch_numbers_from_one_and_keeps_the_older_messages(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "o.db", clock=clock)
    for _ in range(3):
        box.add(b"old", 1)
    box.acked(1)
    box.new_epoch()  # a firmware reset: the counter restarts
    assert (box.epoch, box.next_seq) == (1, 1)
    assert [(m.epoch, m.seq) for m in (box.add(b"new", 1), box.add(b"new", 1))] == [
        (1, 1), (1, 2)]
    assert [(m.epoch, m.seq) for m in box] == [(0, 2), (0, 3), (1, 1), (1, 2)]
    box.acked(1, epoch=1)  # epoch 1's seq 1, not epoch 0's
    assert [(m.epoch, m.seq) for m in box] == [(0, 2), (0, 3), (1, 2)]
    assert [m.payload for m in box.replay([(1, 1)])] == [b"old"]
    assert [m.payload for m in box.replay([(1, 1)], epoch=1)] == [b"new"]
    last = box.last_acked()
    assert last is not None and (last.epoch, last.seq) == (1, 1)
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert (again.epoch, again.next_seq) == (1, 3)
    assert [(m.epoch, m.seq) for m in again] == [(0, 2), (0, 3), (1, 2)]


def test_an_outbox_written_without_epochs_is_moved_to_epoch_zero(tmp_path):
    path = tmp_path / "o.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL,
                             samples INTEGER NOT NULL, acked_at REAL);
        CREATE INDEX outbox_acked ON outbox (acked_at) WHERE acked_at IS NOT NULL;
        CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO outbox VALUES (1, x'01', 1, 5.0), (2, x'02', 2, NULL);
        INSERT INTO meta VALUES ('next_seq', 3);""")
    db.close()
    box = Outbox(path)
    assert (box.epoch, box.next_seq) == (0, 3)
    assert [(m.epoch, m.seq, m.payload) for m in box] == [(0, 2, b"\x02")]
    assert [m.seq for m in box.replay([(1, 2)])] == [1]
    box.new_epoch()
    assert (box.add(b"x", 1).epoch, Outbox(path).epoch) == (1, 1)
