"""`score` outputs across runs: resume keyed on content, one writer per output, outputs replaced together,
stale companions removed, long names, no folders made for a typo."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.fileio import OutputLock, file_fingerprint, unchanged_since
from clip_aesthetics.pipeline.images import find_images
from clip_aesthetics.runs import resumable as score_run
from clip_aesthetics.runs import score as scoring
from clip_aesthetics.runs.resumable import parts_folder_for
from conftest import photo
from test_score_run import _slow_score_process, _wait_for, read_csv, run, score_args, uninterrupted_with

DAY_AGO = time.time() - 86400


@pytest.fixture
def old_photos(photo_dir: Path) -> Path:
    """The 8 photos, 6 copies and an unreadable file, last modified a day ago (no racy mtimes)."""
    for i, source in enumerate(find_images([photo_dir])[:6]):
        (photo_dir / f"copy{i}{source.suffix}").write_bytes(source.read_bytes())
    (photo_dir / "empty.jpg").write_bytes(b"")
    for file in photo_dir.rglob("*"):
        os.utime(file, (DAY_AGO, DAY_AGO))
    return photo_dir


@contextlib.contextmanager
def score_process(args: list[str], tmp_path: Path, parts: Path, min_parts: int):
    """The real CLI in a subprocess, handed over once ``min_parts`` part files exist; ended by its pid."""
    process = _slow_score_process(args, tmp_path)
    try:
        _wait_for(lambda: len(list(parts.glob("part-*.parquet"))) >= min_parts, process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


def counting_iter_scored(monkeypatch) -> list[int]:
    counted: list[int] = []
    real = scoring.iter_scored

    def counting(scorer, sources, **options):
        counted.append(len(sources))
        yield from real(scorer, sources, **options)

    monkeypatch.setattr(scoring, "iter_scored", counting)
    return counted


def test_input_replaced_in_place_after_a_kill_is_scored_again(
    old_photos: Path, tmp_path: Path, tiny_clip_spec: str, monkeypatch
) -> None:
    out = tmp_path / "ranked.csv"
    args = score_args(old_photos, tiny_clip_spec, out)
    parts = parts_folder_for(out)
    with score_process(args, tmp_path, parts, min_parts=2) as process:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    n_kept = 4 * len(list(parts.glob("part-*.parquet")))
    first = find_images([old_photos])[0]  # position 0: in the first part, its batch is positions 0 and 1
    inode = first.stat().st_ino
    photo(99).save(first)  # same name, same inode, new content
    assert first.stat().st_ino == inode

    counted = counting_iter_scored(monkeypatch)
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert sum(counted) == (15 - n_kept) + 2  # the missing parts, and the changed input's whole batch
    monkeypatch.undo()
    assert read_csv(out) == uninterrupted_with(args, tmp_path / "fresh.csv")  # scores of the new content
    assert not parts.exists()


def test_fingerprint_hashes_files_modified_moments_ago(tmp_path: Path) -> None:
    file = tmp_path / "a.jpg"
    photo(1).save(file)
    recorded = file_fingerprint(file)
    assert recorded[3] is not None  # just written: size and mtime alone are not trusted
    stat = file.stat()
    file.write_bytes(bytes(reversed(file.read_bytes())))  # other content, same length, same inode
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, mtime and inode
    assert file.stat().st_size == stat.st_size
    assert not unchanged_since(file, recorded)

    os.utime(file, (DAY_AGO, DAY_AGO))
    settled = file_fingerprint(file)
    assert settled[3] is None and unchanged_since(file, settled)
    os.utime(file, None)  # touched: a new mtime
    assert not unchanged_since(file, settled)
    missing = file_fingerprint(tmp_path / "gone.jpg")
    assert unchanged_since(tmp_path / "gone.jpg", missing) and not unchanged_since(file, missing)


def test_rerun_without_embeddings_removes_the_stale_file(
    old_photos: Path, tmp_path: Path, tiny_clip_spec: str
) -> None:
    out = tmp_path / "ranked.csv"
    stored = tmp_path / "ranked.embeddings.parquet"
    assert run(*score_args(old_photos, tiny_clip_spec, out, "--embeddings")).exit_code == 0
    assert pq.read_metadata(stored).num_rows == 14
    # scoring the stored file into the same output keeps it: it is this run's input
    result = run("score", "--from-embeddings", stored, "--positive", "a", "--negative", "b", "-o", out)
    assert result.exit_code == 0, result.output
    assert stored.is_file()
    (old_photos / "empty.jpg").unlink()
    result = run(*score_args(old_photos, tiny_clip_spec, out))
    assert result.exit_code == 0, result.output
    assert len(read_csv(out)) == 14
    assert not stored.exists()  # it described the previous results
    assert not (tmp_path / "ranked.errors.csv").exists()  # no unreadable input any more


def test_second_run_on_one_output_is_refused_naming_the_first(
    old_photos: Path, tmp_path: Path, tiny_clip_spec: str
) -> None:
    out = tmp_path / "ranked.csv"
    args = score_args(old_photos, tiny_clip_spec, out)
    parts = parts_folder_for(out)
    with score_process(args, tmp_path, parts, min_parts=1) as process:
        before = sorted(p.name for p in parts.iterdir())
        result = run(*args)
        assert result.exit_code == 2
        assert f"pid {process.pid}" in result.output
        assert set(before) <= {p.name for p in parts.iterdir()}  # its parts were not cleared
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    result = run(*args)  # the kernel released the dead run's lock
    assert result.exit_code == 0, result.output
    assert len(read_csv(out)) == 14
    assert not OutputLock(out).path.exists()


def test_lock_taken_twice_in_one_process_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "ranked.csv"
    with OutputLock(out), pytest.raises(RuntimeError, match=f"pid {os.getpid()}"):
        OutputLock(out).acquire()
    with OutputLock(out):  # released: free again
        pass


def test_full_disk_while_writing_embeddings_replaces_no_output(
    old_photos: Path, tmp_path: Path, tiny_clip_spec: str, monkeypatch
) -> None:
    out = tmp_path / "ranked.csv"
    assert run(*score_args(old_photos, tiny_clip_spec, out, "--embeddings")).exit_code == 0
    names = ["ranked.csv", "ranked.errors.csv", "ranked.embeddings.parquet"]
    before = {name: (tmp_path / name).read_bytes() for name in names}
    photo(50).save(old_photos / "new.jpg")  # the next run has other results

    real = score_run.pq.ParquetWriter.write_table

    def full_at_embeddings(self, *args, **kwargs):  # the disk fills while the embeddings are written
        if "embeddings" in str(self.where):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(score_run.pq.ParquetWriter, "write_table", full_at_embeddings)
    args = score_args(old_photos, tiny_clip_spec, out, "--embeddings", "--overwrite")
    result = run(*args)
    assert result.exit_code == 2
    assert "ranked.embeddings.parquet" in result.output
    assert {name: (tmp_path / name).read_bytes() for name in names} == before  # all three untouched
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert parts_folder_for(out).is_dir()  # the results are kept for a rerun
    monkeypatch.undo()
    result = run(*score_args(old_photos, tiny_clip_spec, out, "--embeddings"))
    assert result.exit_code == 0, result.output
    assert len(read_csv(out)) == 15 and pq.read_metadata(tmp_path / names[2]).num_rows == 15


@pytest.mark.parametrize("stem", ["r" * 246, "é" * 123])
def test_output_name_of_250_bytes_works(old_photos: Path, tmp_path: Path, tiny_clip_spec: str, stem) -> None:
    out = tmp_path / f"{stem}.csv"
    assert len(os.fsencode(out.name)) == 250
    result = run(*score_args(old_photos, tiny_clip_spec, out, "--embeddings"))
    assert result.exit_code == 0, result.output
    assert len(read_csv(out)) == 14
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    errors = [n for n in written if n.endswith(".errors.csv")]
    embeddings = [n for n in written if n.endswith(".embeddings.parquet")]
    assert len(errors) == 1 and len(read_csv(tmp_path / errors[0])) == 1
    assert len(embeddings) == 1 and pq.read_metadata(tmp_path / embeddings[0]).num_rows == 14
    assert all(len(os.fsencode(n)) <= 255 for n in os.listdir(tmp_path))


def test_missing_output_folders_are_not_created(
    old_photos: Path, tmp_path: Path, tiny_clip_spec: str
) -> None:
    typo = tmp_path / "nonexistent" / "dir" / "ranked.csv"
    result = run(*score_args(old_photos, tiny_clip_spec, typo))
    assert result.exit_code == 2
    assert not (tmp_path / "nonexistent").exists()
    one_level = tmp_path / "results" / "ranked.csv"  # its own folder is made, as mkdir would
    assert run(*score_args(old_photos, tiny_clip_spec, one_level)).exit_code == 0
    assert len(read_csv(one_level)) == 14


def test_files_from_a_list_or_stdin(old_photos: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    files = [p for p in find_images([old_photos]) if p.name != "empty.jpg"]
    expected = tmp_path / "expected.csv"
    command, _, *options = score_args(old_photos, tiny_clip_spec, expected)
    assert run(command, *files, *options).exit_code == 0  # the same files given as arguments
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f}\n" for f in [*files, files[0]]))  # a duplicate is scored once
    out = tmp_path / "listed.csv"
    args = score_args(old_photos, tiny_clip_spec, out)
    args = [args[0], "--files-from", str(listing), *args[2:]]
    assert run(*args).exit_code == 0
    assert read_csv(out) == read_csv(expected)

    # NUL-separated on stdin (find -print0), a name with a line break, and a missing file as an error row
    odd = old_photos / "two\nlines.jpg"
    odd.write_bytes(files[0].read_bytes())
    names = [str(odd), str(files[1]), str(old_photos / "gone.jpg")]
    stdin_out = tmp_path / "stdin.csv"
    args = score_args(old_photos, tiny_clip_spec, stdin_out)
    result = CliRunner().invoke(
        app, [args[0], "--files-from", "-", *map(str, args[2:])], input="\0".join(names)
    )
    assert result.exit_code == 0, result.output
    assert sorted(r["path"] for r in read_csv(stdin_out)) == sorted(names[:2])
    assert [r["path"] for r in read_csv(tmp_path / "stdin.errors.csv")] == [names[2]]


def test_changed_input_in_a_finished_part_keeps_the_other_embeddings(
    old_photos: Path, tmp_path: Path, tiny_clip_spec: str, monkeypatch
) -> None:
    from test_score_run import _failing_after

    out = tmp_path / "ranked.parquet"
    args = score_args(old_photos, tiny_clip_spec, out, "--embeddings")
    monkeypatch.setattr(scoring, "iter_scored", _failing_after(5))  # parts 0 and 1 finished
    assert run(*args).exit_code != 0
    monkeypatch.undo()
    changed = find_images([old_photos])[3]  # part 0, second batch: the first batch's rows are kept
    photo(77).save(changed, format="PNG" if changed.suffix == ".png" else "JPEG")
    counted = counting_iter_scored(monkeypatch)
    assert run(*args).exit_code == 0
    assert sum(counted) == (15 - 8) + 2
    monkeypatch.undo()
    fresh = tmp_path / "fresh.parquet"
    assert run(*score_args(old_photos, tiny_clip_spec, fresh, "--embeddings")).exit_code == 0
    assert pq.read_table(out).equals(pq.read_table(fresh))
    stored, expected = (pq.read_table(tmp_path / f"{n}.embeddings.parquet") for n in ("ranked", "fresh"))
    assert stored.to_pylist() == expected.to_pylist()
