"""Read the records of an offline W&B run file (a LevelDB-style log of protobuf records).

wandb >= 0.2x writes it from its Go core and no longer ships a Python reader, so the test reads it here.
"""
from __future__ import annotations

import struct
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


def history_keys(path: Path) -> dict[str, list]:
    """Every key logged to the run's history, with its values in order."""
    import json

    from wandb.proto import wandb_internal_pb2

    out: dict[str, list] = {}
    for blob in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(blob)
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                out.setdefault(key, []).append(json.loads(item.value_json))
    return out
