"""Hostile and careless text inputs: byte-order marks, other encodings, impossible vote counts, word
lists naming missing files, datasets that cannot take a manifest. Each is read right or is one named error."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.datasets import (
    ParseError,
    load_broken_manifest,
    make_synthetic_ava,
    parse_ava,
    parse_csv,
)
from clip_aesthetics.datasets.verify import verify_dataset
from clip_aesthetics.encoders.prompts import load_prompt_file
from clip_aesthetics.fileio import TextDecodeError, check_writable, read_text
from clip_aesthetics.study.prompt_search import load_word_list, ranked_markdown

BOM = "\ufeff".encode()
VOTES = [
    [0, 1, 5, 17, 38, 36, 15, 6, 5, 1],
    [10, 7, 15, 26, 26, 21, 10, 8, 1, 2],
    [0, 0, 4, 8, 41, 56, 10, 3, 4, 0],
]
IDS = ["953619", "953958", "954184"]


def _one_line_error(result, code: int = 2) -> str:
    """The single stderr line of a failed command, whitespace-normalised (rich may wrap it)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.output.startswith("error:"), result.output
    return " ".join(result.output.split())


def _ava(root: Path, lines: list[str], test_ids: bytes = b"953619\n954184\n") -> Path:
    (root / "aesthetics_image_lists").mkdir(parents=True)
    (root / "AVA.txt").write_bytes("\n".join(lines).encode() + b"\n")
    (root / "aesthetics_image_lists" / "generic_test.jpgl").write_bytes(test_ids)
    return root


def _lines(votes: list[list[int]] = VOTES) -> list[str]:
    return [" ".join(map(str, [i, IDS[i - 1], *v, 0, 0, 1396])) for i, v in enumerate(votes, start=1)]


def test_bom_in_test_list_and_ava_txt_keeps_the_first_test_image_in_test(tmp_path: Path) -> None:
    root = _ava(tmp_path / "AVA_dataset", _lines(), test_ids=BOM + b"953619\r\n954184\r\n")
    (root / "AVA.txt").write_bytes(BOM + (root / "AVA.txt").read_bytes())
    splits = {r.id: r.split for r in parse_ava(root, check_files=False).records}
    assert splits == {"953619": "test", "953958": "train", "954184": "test"}


def test_bom_in_csv_manifest_prompt_and_word_files(tmp_path: Path) -> None:
    csv_file = tmp_path / "labels.csv"
    csv_file.write_bytes(BOM + b"id,score\na,7\nb,3\n")
    assert [r.id for r in parse_csv(csv_file, check_files=False).records] == ["a", "b"]
    manifest = tmp_path / "broken.json"
    manifest.write_bytes(BOM + json.dumps({"broken": {"a": "truncated"}}).encode())
    assert load_broken_manifest(manifest) == {"a": "truncated"}
    prompts = tmp_path / "p.json"
    prompts.write_bytes(
        BOM + json.dumps({"positive": ["a nice photo"], "negative": ["a bad photo"]}).encode()
    )
    assert load_prompt_file(prompts).positive == ("a nice photo",)
    words = tmp_path / "adjectives.txt"
    words.write_bytes(BOM + b"stunning\nlovely\n")
    assert load_word_list(str(words), ("x",)) == ("stunning", "lovely")


@pytest.mark.parametrize("kind", ["csv", "ava", "jpgl"])
def test_latin1_label_file_names_the_file_and_line(tmp_path: Path, kind: str) -> None:
    if kind == "csv":
        bad = tmp_path / "labels.csv"
        bad.write_bytes("id,score\na,7\ncaf\u00e9,3\n".encode("latin-1"))
        parse = lambda: parse_csv(bad, check_files=False)  # noqa: E731
        line = 3
    else:
        root = _ava(tmp_path / "AVA_dataset", _lines())
        bad = root / ("AVA.txt" if kind == "ava" else "aesthetics_image_lists/generic_test.jpgl")
        bad.write_bytes(bad.read_bytes() + "\n# r\u00e9sum\u00e9\n".encode("latin-1"))
        parse = lambda: parse_ava(root, check_files=False)  # noqa: E731
        line = bad.read_bytes().count(b"\n")
    with pytest.raises(TextDecodeError) as err:
        parse()
    assert str(err.value).startswith(f"{bad}:{line}: not UTF-8 text (byte 0xe9)")


def test_latin1_label_file_is_a_one_line_cli_error(tmp_path: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_bytes("id,score\ncaf\u00e9,3\n".encode("latin-1"))
    result = CliRunner().invoke(app, ["datasets", "verify", str(bad), "--dataset", "csv"])
    assert f"{bad}:2: not UTF-8 text" in _one_line_error(result)


@pytest.mark.parametrize(
    ("count", "reason"),
    [(-1, "negative vote"), (2**63 - 1, "implausible vote counts"), (10**20, "implausible vote counts")],
)
def test_impossible_vote_counts_are_rejected_with_file_and_line(
    tmp_path: Path, count: int, reason: str
) -> None:
    votes = [list(v) for v in VOTES]
    votes[1][4] = count
    root = _ava(tmp_path / "AVA_dataset", _lines(votes))
    with pytest.raises(ParseError, match=reason) as err:
        parse_ava(root, check_files=False)
    assert str(err.value).startswith(f"{root / 'AVA.txt'}:2:")
    lenient = parse_ava(root, check_files=False, lenient=True)  # the other lines are read, unchanged
    assert [r.id for r in lenient.records] == ["953619", "954184"]
    np.testing.assert_array_equal(lenient.records[1].votes, VOTES[2])

    csv_file = tmp_path / "votes.csv"
    header = ",".join(["id", *(f"votes_{i}" for i in range(1, 11))])
    rows = [",".join([image_id, *map(str, v)]) for image_id, v in zip(IDS, votes, strict=True)]
    csv_file.write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises(ParseError, match=reason) as err:
        parse_csv(csv_file, check_files=False)
    assert str(err.value).startswith(f"{csv_file}:3:")


def test_a_billion_votes_is_the_limit(tmp_path: Path) -> None:
    votes = [list(v) for v in VOTES]
    votes[0] = [0] * 9 + [10**9]
    records = parse_ava(_ava(tmp_path / "AVA_dataset", _lines(votes)), check_files=False).records
    assert records[0].mean == 10.0


@pytest.mark.parametrize("value", ["/no/such/file.txt", "words.txt", "pos.yaml", "dir/words"])
def test_word_list_that_looks_like_a_missing_file_is_refused(value: str) -> None:
    with pytest.raises(FileNotFoundError, match="word list not found"):
        load_word_list(value, ("x",))
    assert load_word_list("stunning, lovely", ("x",)) == ("stunning", "lovely")  # a plain list still works


def test_prompts_search_with_a_missing_positive_file_fails_at_once(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["prompts", "search", str(tmp_path), "--positive", "/no/such/file.txt"])
    assert "word list not found: /no/such/file.txt" in _one_line_error(result)


def test_pipe_in_an_adjective_stays_in_its_markdown_cell() -> None:
    row = {"rank": 1, "strategy": "fixed", "positive": "good|great", "negative": "bad", "srcc": 0.5}
    table = ranked_markdown([{**row, "plcc": 0.4, "accuracy": 0.7}])
    cells = re.split(r"(?<!\\)\|", table.splitlines()[2])[1:-1]  # a Markdown renderer's split
    assert len(cells) == 7 and cells[2].strip() == "good\\|great"


def test_synth_ava_refuses_impossible_sizes_before_writing(tmp_path: Path) -> None:
    for args, phrase in [
        (["--size", "100000"], "size in [16, 4096]"),
        (["--n", "10", "--n-corrupt", "50"], "--n-corrupt 50 exceeds the 5 train images"),
    ]:
        result = CliRunner().invoke(app, ["synth-ava", str(tmp_path / "out"), *args])
        assert phrase in _one_line_error(result)
        assert not (tmp_path / "out").exists()


def _read_only(root: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root can write anywhere")
        root.chmod(0o555)
        return
    real_touch = Path.touch

    def touch(self: Path, *args, **kwargs) -> None:  # a read-only mount, as root would meet it
        if self.parent == root:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_touch(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", touch)


@pytest.mark.parametrize("how", ["chmod", "read-only mount"])
def test_verify_on_a_read_only_dataset_fails_before_opening_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    root = make_synthetic_ava(tmp_path / "AVA_dataset", n=6, size=16, n_missing=0)
    opened = []
    never_open = lambda *a, **k: opened.append(1) or []  # noqa: E731
    monkeypatch.setattr("clip_aesthetics.datasets.verify.iter_batches", never_open)
    _read_only(root, how, monkeypatch)
    try:
        with pytest.raises(OSError, match=r"cannot write .*broken_images\.json"):
            verify_dataset("ava", root, workers=0)
        result = CliRunner().invoke(app, ["datasets", "verify", str(root), "--workers", "0"])
        assert f"cannot write {root / 'broken_images.json'}" in _one_line_error(result)
    finally:
        root.chmod(0o755)
    assert opened == [] and not (root / "broken_images.json").exists()
    verify_dataset("ava", root, workers=0, manifest=tmp_path / "elsewhere.json")  # another place works
    assert load_broken_manifest(tmp_path / "elsewhere.json") == {}


def test_check_writable_refuses_folders_and_missing_parents(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        check_writable(tmp_path / "nope" / "x.json")
    assert check_writable(tmp_path / "x.json") == tmp_path / "x.json" and list(tmp_path.iterdir()) == []
    (tmp_path / "t.txt").write_bytes(BOM + b"ok")
    assert read_text(tmp_path / "t.txt") == "ok"
