"""Load checkpoints without ever running code from them: ``torch.load(weights_only=True)`` or safetensors.

A pickle can name any callable (``os.system``, ``builtins.eval``) to be called while it loads. The
weights-only unpickler refuses every global outside tensors and plain containers; we turn its refusal into
an error that names the file and the offending global, and never fall back to a full unpickle.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

HASH_CHUNK_BYTES = 1 << 22


class UnsafeCheckpointError(RuntimeError):
    """The file holds pickled objects beyond tensors and plain containers; nothing from it was executed."""


class CheckpointReadError(ValueError):
    """The file is not a readable PyTorch checkpoint (truncated, empty, or another kind of file)."""


def _unreadable(path: Path, err: Exception) -> CheckpointReadError:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]  # torch's first sentence
    size = path.stat().st_size
    kind = "empty" if not size else "truncated or damaged" if _looks_like_a_checkpoint(path) else "not a PyTorch checkpoint"
    return CheckpointReadError(
        f"cannot read checkpoint {path} ({size} bytes): the file is {kind} "
        f"({type(err).__name__}: {reason}). Use an intact checkpoint: checkpoints/last.ckpt or an epochNNN.ckpt "
        "of the run, or copy the file again if it was cut short"
    )


def _refusal_reason(err: Exception) -> str:
    text = str(err)
    match = re.search(r"(Unsupported global: .*|Trying to load unsupported GLOBAL [^\n]*|Unsupported operand [^\n]*)", text)
    return match.group(1).strip() if match else text.strip().splitlines()[0]


_PLAIN_GLOBAL_PREFIXES = ("torch.", "collections.", "_codecs.", "builtins.set", "builtins.frozenset")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def referenced_globals(path: str | Path) -> list[str]:
    """The callables a pickle names (e.g. ``posix.system``), read opcode by opcode without executing any."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next(name for name in archive.namelist() if name.endswith("data.pkl"))
                payload = archive.read(member)
        else:
            payload = path.read_bytes()
        found, recent_strings = [], []
        for opcode, arg, _ in pickletools.genops(payload):
            if opcode.name in _STRING_OPS:
                recent_strings = (recent_strings + [str(arg)])[-2:]
            elif opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(recent_strings) == 2:
                found.append(".".join(recent_strings))
    except Exception:  # a damaged pickle: the torch error alone has to do
        return []
    return [name for name in dict.fromkeys(found) if not name.startswith(_PLAIN_GLOBAL_PREFIXES)]


def load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with a clear refusal for pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not _looks_like_a_checkpoint(path):
        raise _unreadable(path, ValueError("neither a zip archive nor a pickle"))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, KeyError, OSError) as err:  # torch's zip reader, a pickle cut short
        raise _unreadable(path, err) from None
    except pickle.UnpicklingError as err:
        callables = referenced_globals(path)
        named = f"it references {', '.join(callables[:5])}; " if callables else ""
        raise UnsafeCheckpointError(
            f"refused to load {path}: it holds pickled objects other than tensors and plain containers "
            f"({named}{_refusal_reason(err)}). Loading it fully could run arbitrary code, so it was loaded with "
            "weights_only=True and nothing in it was executed. Use a checkpoint written by this project, or an "
            "exported backbone (.safetensors)."
        ) from None


def _looks_like_a_checkpoint(path: Path) -> bool:
    """A zip archive (torch.save) or a pickle (protocol >= 2 starts with the PROTO opcode), by its first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith((b"PK\x03\x04", b"\x80"))


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the string metadata of a safetensors file (the format cannot hold code)."""
    from safetensors import safe_open

    tensors, path = {}, Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone file not found: {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = dict(f.metadata() or {})
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return tensors, metadata


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)
