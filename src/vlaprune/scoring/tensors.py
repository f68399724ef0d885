"""Read checkpoints tensor by tensor, and row-chunk by row-chunk, without loading a whole model.

`TensorSource(path)` accepts a `.safetensors` file, a sharded index (`*.safetensors.index.json`) or a folder
holding either (model.safetensors, pruned_model.safetensors, or an index). `rows(name, start, stop)` reads
only those rows with positioned reads (`os.pread`) into a fresh buffer. The safetensors library reads
through a memory map, whose touched pages stay resident (and count in the process's RSS) while the file is
open; for two multi-GB checkpoints that is the whole checkpoint. The format itself is simple and stable
(8-byte header length, a JSON header of dtype / shape / byte offsets, then raw little-endian data), so
reading it directly keeps memory at one chunk.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch

from vlaprune.errors import VlapruneError

WEIGHT_FILES = ("model.safetensors", "pruned_model.safetensors")
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_header(path: Path) -> tuple[dict, int]:
    """(tensor entries, byte offset of the data section) of a safetensors file; VlapruneError if corrupt."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or n > min(size - 8, 100 * 2**20):
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for name, e in header.items():
            start, end = e["data_offsets"]
            want = math.prod(e["shape"]) * torch.empty((), dtype=DTYPES[e["dtype"]]).element_size()
            if end - start != want or 8 + n + end > size:
                raise ValueError(f"tensor {name} extends past the file or has the wrong size")
        return header, 8 + n
    except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError) as e:
        raise VlapruneError(
            f"{path} is not a valid safetensors file ({e}); re-download or re-save it"
        ) from None


class TensorSource:
    """Names, shapes and row slices of every tensor in a safetensors checkpoint (one file or sharded)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, tuple[Path, dict, int]] = {}
        files = self._files(self.path)
        for f in dict.fromkeys(files.values() if isinstance(files, dict) else files):
            header, base = read_header(f)
            for name, e in header.items():
                self.entries[name] = (f, e, base)
        if isinstance(files, dict):
            missing = [n for n in files if n not in self.entries]
            if missing:
                raise VlapruneError(
                    f"{self.path}: {len(missing)} tensors of the index are in no shard (e.g. {missing[0]})"
                )
        self._fds: dict[Path, int] = {}

    @staticmethod
    def _files(path: Path) -> list[Path] | dict[str, Path]:
        if not path.exists():
            raise VlapruneError(f"{path}: no such checkpoint file or folder")
        if path.is_dir():
            index = sorted(path.glob("*.safetensors.index.json"))
            if index:
                path = index[0]
            else:
                for name in WEIGHT_FILES:
                    if (path / name).is_file():
                        return [path / name]
                shards = sorted(path.glob("*.safetensors"))
                if not shards:
                    raise VlapruneError(f"{path} holds no .safetensors weights")
                return shards
        if path.name.endswith(".index.json"):
            try:
                weight_map = json.loads(path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise VlapruneError(f"{path} is not a safetensors index (no weight_map)") from None
            return {name: path.parent / f for name, f in weight_map.items()}
        return [path]

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name][1]["shape"])

    def nbytes(self, name: str) -> int:
        start, end = self.entries[name][1]["data_offsets"]
        return end - start

    def _fd(self, f: Path) -> int:
        if f not in self._fds:
            self._fds[f] = os.open(f, os.O_RDONLY)
        return self._fds[f]

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the tensor (the whole tensor for 0-d), read from disk."""
        f, e, base = self.entries[name]
        shape, dtype = e["shape"], DTYPES[e["dtype"]]
        item = torch.empty((), dtype=dtype).element_size()
        row = item * math.prod(shape[1:]) if shape else item
        if not shape:
            start, stop = 0, 1
        n = (stop - start) * row
        buf = bytearray(n)
        off, view, fd = base + e["data_offsets"][0] + start * row, memoryview(buf), self._fd(f)
        got = 0
        while got < n:
            k = os.preadv(fd, [view[got:]], off + got)
            if k <= 0:
                raise VlapruneError(f"{f} ended early while reading {name}; the file is truncated")
            got += k
        t = torch.frombuffer(buf, dtype=dtype) if n else torch.empty(0, dtype=dtype)
        return t.reshape((stop - start, *shape[1:]) if shape else (1,))

    def tensor(self, name: str) -> torch.Tensor:
        shape = self.shape(name)
        t = self.rows(name, 0, shape[0] if shape else 1)
        return t.reshape(shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
