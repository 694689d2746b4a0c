"""Atomic writes keep the previous file on failure; file digests follow content, not paths."""

import hashlib
import os

import pytest

from clip_aesthetics.fileio import atomic_write, atomic_write_json, file_digest, folder_digest


def test_atomic_write_keeps_the_previous_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "ranked.csv"
    target.write_text("old,content\n")

    def failing(handle):
        handle.write("half a ro")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_text() == "old,content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranked.csv"]  # no temporary left behind


def test_atomic_write_replaces_whole_and_follows_the_umask(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_file_digest_is_sha256_and_changes_when_a_file_is_replaced_in_place(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"first")
    assert file_digest(weights) == "sha256:" + hashlib.sha256(b"first").hexdigest()
    weights.write_bytes(b"other bytes")
    os.utime(weights, ns=(1, 1))  # even a restored mtime differs from the first write's
    assert file_digest(weights) == "sha256:" + hashlib.sha256(b"other bytes").hexdigest()


def test_folder_digest_covers_names_and_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    first = folder_digest(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text('{"x": 1}')
    assert folder_digest(tmp_path / "a") != first
