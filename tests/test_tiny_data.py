"""The shared tiny image tree (tests/tiny_data.py) under two xdist workers: extracted aside and renamed into place
complete, one worker at a time, so a worker never copies a tree that another is still writing or removing."""
import tarfile
import threading
from pathlib import Path

import tiny_data
from tiny_data import COMPLETE, TEST_PER_CLASS, TRAIN_PER_CLASS, tiny_tree


def files_of(tree: Path) -> dict[str, bytes]:
    return {p.relative_to(tree).as_posix(): p.read_bytes() for p in sorted(tree.rglob("*.jpg"))}


def test_two_workers_extracting_at_once_each_get_the_whole_tree_never_a_half_written_one(
        cifar10_tar, tmp_path, monkeypatch):
    cache = tmp_path / "shared-cache"
    master = cache / f"tiny-tree-{TRAIN_PER_CLASS}-{TEST_PER_CLASS}"
    master.mkdir(parents=True)
    (master / "train").mkdir()
    (master / "train" / "half.jpg").write_bytes(b"\xff\xd8")  # left by an interrupted extraction: no marker
    under_master = []
    original = Path.write_bytes

    def watching(self, data):
        if master in self.parents:  # a file written where a reader may be copying from
            under_master.append(self)
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", watching)
    start, errors = threading.Barrier(2), []

    def worker(i):
        start.wait()
        try:
            tiny_tree(cifar10_tar, cache, tmp_path / f"worker{i}")
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert under_master == []
    assert (master / COMPLETE).is_file() and not (master / "train" / "half.jpg").exists()
    lock = cache / f".{master.name}.lock"
    assert sorted(cache.iterdir()) == sorted([master, lock])  # no staging or stale folder left behind
    trees = [files_of(tmp_path / f"worker{i}") for i in range(2)]
    assert trees[0] == trees[1] == files_of(master)
    assert len(trees[0]) == 10 * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    assert all(data[:2] == b"\xff\xd8" and len(data) > 100 for data in trees[0].values())  # whole JPEGs


def test_a_worker_that_looked_before_another_renamed_its_tree_into_place_leaves_that_tree_alone(
        cifar10_tar, tmp_path, monkeypatch):
    """Worker A finds no complete tree and goes to extract; worker B renames its complete tree into place first. A
    (holding the lock now) must neither remove nor rewrite B's tree, which a third worker may be copying."""
    cache = tmp_path / "shared-cache"
    tiny_tree(cifar10_tar, cache, tmp_path / "b")  # B's tree, in place
    master = cache / f"tiny-tree-{TRAIN_PER_CLASS}-{TEST_PER_CLASS}"
    before = {p: p.stat().st_ino for p in master.rglob("*")}

    def no_second_extraction(*args, **kwargs):
        raise AssertionError("extracted again over a complete tree")

    monkeypatch.setattr(tarfile, "open", no_second_extraction)
    tiny_data._extract_once(cifar10_tar, master)  # A, whose look came before B's rename
    assert {p: p.stat().st_ino for p in master.rglob("*")} == before
    assert files_of(tiny_tree(cifar10_tar, cache, tmp_path / "c")) == files_of(tmp_path / "b")
