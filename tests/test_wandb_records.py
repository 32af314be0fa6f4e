"""tests/wandb_records.py reads W&B run files while wandb's service process may still be writing them: a record cut
short is not read, and the flush wait returns only once the run's exit record and the wanted keys are on disk."""
import json
import struct
import threading

import pytest

from wandb_records import BLOCK, FULL, HEADER, history_keys, wait_for_history

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")


def framed(record) -> bytes:
    data = record.SerializeToString()
    assert len(data) < BLOCK - HEADER - 7  # one FULL chunk in the first block
    return struct.pack("<IHB", 0, len(data), FULL) + data


def history_record(step: int) -> bytes:
    record = pb.Record()
    item = record.history.item.add()
    item.key, item.value_json = "train/loss", json.dumps(1.0 / (step + 1))
    return framed(record)


def exit_record() -> bytes:
    record = pb.Record()
    record.exit.exit_code = 0
    return framed(record)


class FakeTime:
    """A clock that moves only when the code under test sleeps; each sleep may run an action (the other writer's
    next step), so the order of reads and writes is fixed and no machine's speed enters the test."""

    def __init__(self, *actions):
        self.now, self.sleeps, self.actions = 0.0, [], list(actions)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.actions:
            self.actions.pop(0)()


def cut_run_file(tmp_path):
    """A run file whose third history record is half written: the whole bytes, and the file holding the cut ones."""
    run_file = tmp_path / "wandb" / "offline-run-1" / "run-1.wandb"
    run_file.parent.mkdir(parents=True)
    whole = b":W&B" + b"\x00" * (HEADER - 4) + b"".join(history_record(s) for s in range(3)) + exit_record()
    cut = len(whole) - len(exit_record()) - 5  # the third history record half written
    run_file.write_bytes(whole[:cut])
    return run_file, whole


def test_a_record_cut_short_is_not_read_and_the_wait_returns_once_the_exit_record_is_written(tmp_path):
    run_file, whole = cut_run_file(tmp_path)
    assert history_keys(run_file) == {"train/loss": [1.0, 0.5]}

    # The key is on disk but the exit record is not: the wait reads, sleeps (W&B writes the rest meanwhile), and reads
    # again. The writer runs only inside that sleep, so a wait that returned on the key alone would see two values.
    fake = FakeTime(lambda: None, lambda: run_file.write_bytes(whole))
    history = wait_for_history(tmp_path, ["train/loss"], timeout=30, poll=0.05, clock=fake.clock, sleep=fake.sleep)
    assert history == {"train/loss": [1.0, 0.5, 1 / 3]}
    assert fake.sleeps == [0.05, 0.05]  # it waited for the exit record, not just for the key


def test_the_wait_gives_up_at_its_timeout_and_says_what_it_saw(tmp_path):
    cut_run_file(tmp_path)
    fake = FakeTime()
    with pytest.raises(AssertionError, match=r"not flushed within 1 s; record types \['history'\]"):
        wait_for_history(tmp_path, ["train/loss"], timeout=1, poll=0.25, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == [0.25] * 5  # read at 0, 0.25, ..., 1.0 and 1.25, the first read past the deadline


def test_the_real_clock_and_a_concurrent_writer(tmp_path):
    """The defaults (time.monotonic, time.sleep) with W&B's writer in another thread: whatever the machine's speed,
    the wait returns the whole history, and only after the writer wrote it."""
    run_file, whole = cut_run_file(tmp_path)
    writing = threading.Event()

    def finish_writing():
        writing.set()  # before the bytes: a read may see them before this thread runs on
        run_file.write_bytes(whole)

    writer = threading.Timer(0.2, finish_writing)
    writer.start()
    history = wait_for_history(tmp_path, ["train/loss"], timeout=60, poll=0.05)
    assert writing.is_set()  # the wait returned after the write began, however long either took
    writer.join()
    assert history == {"train/loss": [1.0, 0.5, 1 / 3]}
