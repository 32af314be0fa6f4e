"""tests/wandb_records.py reads W&B run files while wandb's service process may still be writing them: a record cut
short is not read, and the flush wait returns only once the run's exit record and the wanted keys are on disk."""
import json
import struct
import threading
import time

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


def test_a_record_cut_short_is_not_read_and_the_wait_returns_once_the_exit_record_is_written(tmp_path):
    run_file = tmp_path / "wandb" / "offline-run-1" / "run-1.wandb"
    run_file.parent.mkdir(parents=True)
    whole = b":W&B" + b"\x00" * (HEADER - 4) + b"".join(history_record(s) for s in range(3)) + exit_record()
    cut = len(whole) - len(exit_record()) - 5  # the third history record half written
    run_file.write_bytes(whole[:cut])
    assert history_keys(run_file) == {"train/loss": [1.0, 0.5]}

    def finish_writing():
        time.sleep(0.6)
        run_file.write_bytes(whole)

    writer = threading.Thread(target=finish_writing)
    writer.start()
    start = time.monotonic()
    history = wait_for_history(tmp_path, ["train/loss"], timeout=30, poll=0.05)
    writer.join()
    assert history == {"train/loss": [1.0, 0.5, 1 / 3]}
    assert time.monotonic() - start >= 0.5  # it waited for the exit record, not just for the key
