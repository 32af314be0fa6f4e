"""benchmarks/gpu_suite.sh off the GPU: --prepare fills the carried folder and prints the device call; --dry-run
runs every stage at tiny sizes on the CPU and writes the summary, so the GPU run's plumbing cannot rot between GPU
sessions.

--prepare copies the GPU wheels from outside the repository (wheels/gpu-py312 beside the shared data folder,
$COKE_DATA_ROOT's parent; ../shared/wheels/gpu-py312 by default):
like missing data (tests/conftest.py), missing wheels skip the test locally but fail it under CI=true. The dry runs
need no wheels (they use the current environment), only the data, which the fixtures require the same way."""
import os
import subprocess
import tarfile
import sys
from pathlib import Path

import pytest

from configs.schema import default_data_root

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "benchmarks" / "gpu_suite.sh"
WHEELS = Path(default_data_root()).resolve().parent / "wheels" / "gpu-py312"
DRY_RUN_STATUS = {
    "install": "ok", "cuda-tests": "ok", "p1-assign": "skipped: needs CUDA", "p3-step": "ok", "profile": "ok",
    "augment": "ok",
    "p2-coke": "ok", "p2-simclr": "ok",
}


def stage_table(summary: str) -> dict[str, str]:
    """stage -> status, from the summary's first table (the stages'; the benchmarks' tables come after it)."""
    table = summary.split("| stage | status |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:3] for line in table.splitlines()[2:]]
    return {name.strip(): status.strip() for name, status in rows}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_wheels(folder: Path = WHEELS) -> Path:
    """The GPU wheels folder with its wheels; without them a skip locally, a failure under CI=true."""
    if not sorted(folder.glob("*.whl")):
        message = f"no GPU wheels at {folder} (see ../shared/wheels/README.md): --prepare has nothing to copy"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_wheels_fail_under_ci_and_skip_only_locally(ci, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception if ci else pytest.skip.Exception, match="no GPU wheels"):
        require_wheels(tmp_path / "nothing-here")
    (tmp_path / "some.whl").write_bytes(b"")
    assert require_wheels(tmp_path) == tmp_path


def test_prepare_fills_the_carried_folder_and_prints_the_device_call(tmp_path, cifar10_tar):
    wheels = require_wheels()
    env = {**os.environ, "GPU_DIR": str(tmp_path / ".gpu"), "CIFAR_SRC": str(cifar10_tar), "WHEELS_SRC": str(wheels)}
    result = subprocess.run(["bash", str(SUITE), "--prepare"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '{"command": "bash benchmarks/gpu_suite.sh", "carry": [".gpu"], "timeout_s": 600}' in result.stdout
    assert (tmp_path / ".gpu" / "data" / "cifar10-jpeg.tar.gz").stat().st_size == cifar10_tar.stat().st_size
    copied = sorted(p.name for p in (tmp_path / ".gpu" / "wheels").iterdir())
    assert copied == sorted(p.name for p in wheels.glob("*.whl"))


@pytest.mark.slow
@pytest.mark.timeout(2800)  # the script stops itself by 2,700 s (its dry-run deadline: only a hang reaches it)
def test_dry_run_runs_every_stage_and_prints_the_summary_last(tmp_path, cifar10, cache_dir, data_root):
    # `cifar10` decodes the data into this session's cache first; the dry run's stages then read it from there.
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "COKE_CACHE_DIR": str(cache_dir),
           "COKE_DATA_ROOT": str(data_root), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(SUITE), "--dry-run"], env=env, capture_output=True, text=True, timeout=2790)
    summary = (tmp_path / "summary.md").read_text()
    assert result.returncode == 0, summary
    assert stage_table(summary) == DRY_RUN_STATUS, summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.tar.gz", "summary.md"]  # 2 of the 8 files allowed
    with tarfile.open(tmp_path / "logs.tar.gz") as logs:
        assert sorted(Path(n).name for n in logs.getnames() if n.endswith(".log")) == sorted(
            f"{s}.log" for s in DRY_RUN_STATUS)
    assert result.stdout.rstrip().endswith(summary.rstrip())
    assert "skipped" in summary.split("## cuda-tests")[1].split("##")[0]  # the CUDA tests collect, then skip
    for table in ("| method | ms/step |", "| pipeline | where | images/s |", "| epoch | train min |",
                  "| loop / step |", "| Lightning action | host ms/step |", "| device-to-host sync (source) |"):
        assert table in summary, table


@pytest.mark.slow
@pytest.mark.timeout(2810)
def test_race_dry_run_trains_scores_and_brings_back_the_dashboards(tmp_path, cifar10, cache_dir, data_root):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "COKE_CACHE_DIR": str(cache_dir),
           "COKE_DATA_ROOT": str(data_root), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(SUITE.with_name("gpu_race.sh")), "--dry-run"], env=env, capture_output=True,
                            text=True, timeout=2800)
    summary = (tmp_path / "summary.md").read_text()
    assert result.returncode == 0, summary
    assert stage_table(summary) == {"install": "ok", "race": "ok"}, summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.tar.gz", "race.png", "summary.md"]
    for row in ("| random init | 0 |", "| coke | 0 |", "| simclr | 0 |"):
        assert row in summary, row
    with tarfile.open(tmp_path / "logs.tar.gz") as logs:
        header = logs.extractfile("./coke-seed0.csv").readline().decode()
    for column in ("coke/h0_changed", "coke/h0_min_size", "coke/h0_under_bound", "coke/h0_dual_max", "coke/nmi_fine"):
        assert column in header, column
