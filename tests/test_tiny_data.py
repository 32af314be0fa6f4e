"""The shared tiny image tree (tests/tiny_data.py) under two xdist workers: extracted aside and renamed into place
complete, so a worker never copies a tree that another is still writing."""
import threading
from pathlib import Path

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
    assert not [p for p in cache.iterdir() if p != master]  # no staging folder left behind
    trees = [files_of(tmp_path / f"worker{i}") for i in range(2)]
    assert trees[0] == trees[1] == files_of(master)
    assert len(trees[0]) == 10 * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    assert all(data[:2] == b"\xff\xd8" and len(data) > 100 for data in trees[0].values())  # whole JPEGs
