"""`sha256_file` reads in chunks: the digest must be that of the whole file at every size, a chunk's
edges included (empty, one byte, a chunk exactly, one byte either side, several chunks)."""

from __future__ import annotations

import hashlib

import pytest

from vlmops.hashing import sha256_file


@pytest.mark.parametrize("size", [0, 1, (1 << 16) - 1, 1 << 16, (1 << 16) + 1, 3 * (1 << 20) + 7])
def test_sha256_file_is_the_digest_of_all_the_bytes(tmp_path, size) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path), chunk=1000) == hashlib.sha256(data).hexdigest()
