"""Read the records of an offline W&B run file (a LevelDB-style log of protobuf records).

wandb >= 0.2x writes it from its Go core and no longer ships a Python reader, so the test reads it here.
"""
from __future__ import annotations

import struct
import time
from pathlib import Path

HEADER = 7  # ":W&B" magic, 2-byte format magic, 1-byte version
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # a record still being written: what is on disk so far ends here
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
        else:
            break


def history_keys(path: Path, kinds: set | None = None) -> dict[str, list]:
    """Every key logged to the run's history, with its values in order (``kinds`` collects every record type seen)."""
    import json

    from wandb.proto import wandb_internal_pb2

    out: dict[str, list] = {}
    for blob in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(blob)
        if kinds is not None:
            kinds.add(record.WhichOneof("record_type"))
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                out.setdefault(key, []).append(json.loads(item.value_json))
    return out


def wait_for_history(run_dir: Path, keys, timeout: float = 120.0, poll: float = 0.25, clock=time.monotonic,
                     sleep=time.sleep) -> dict[str, list]:
    """The history of the run's one offline W&B file, once the file holds the run's exit record and every key in
    ``keys``. W&B's service process may still be flushing after ``finish()``: the file is read again until then, and a
    read that meets a half-written record (cut short, or one that does not parse yet) counts as not yet flushed. The
    timeout only stops a hang (a loaded machine flushes in seconds); the failure says what the last read saw.
    ``clock`` and ``sleep`` are the time it runs on (a test passes its own, so no machine's speed enters it)."""
    deadline, seen = clock() + timeout, "no read yet"
    while True:
        files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
        if len(files) > 1:
            raise AssertionError(f"more than one W&B run file: {files}")
        if files:
            kinds: set = set()
            try:
                history = history_keys(files[0], kinds)
            except Exception as err:  # noqa: BLE001 - a record being written: read again
                seen = f"{type(err).__name__}: {err}"
            else:
                if "exit" in kinds and set(keys) <= set(history):
                    return history
                seen = f"record types {sorted(k for k in kinds if k)}, history keys {sorted(history)}"
        if clock() > deadline:
            raise AssertionError(f"the W&B run file under {run_dir} was not flushed within {timeout:g} s; {seen}")
        sleep(poll)
