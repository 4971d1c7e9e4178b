"""lljax.jobs and sharded runs: shards in sequence and at once into one folder equal a single-process run, a
killed worker's group is taken over, `lljax report` names missing groups, local workers and submitit's local
executor run whole studies."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lljax import cli, jobs, pipeline, store
from lljax.config import Config
from test_pipeline import _assert_tables_close, tiny_dataset

STUDY = ["--widths", "3", "6", "9", "--lrs", "0.05", "0.2", "--batch-sizes", "32", "--seeds", "2", "--epochs", "3",
         "--metrics", "loss", "hessian", "curves", "cka", "l2", "--hessian-samples", "16", "--hessian-top-k", "1",
         "--hessian-lanczos-steps", "4", "--hessian-density-runs", "0", "--curve-epochs", "1",
         "--curve-points", "3", "--cka-samples", "16"]


def config():
    return cli.config_from_args(cli.parser("x", {}).parse_args([*STUDY, "--out", "o"]), {})


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    d = tiny_dataset()
    np.savez(path, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    return path


def cli_env(devices=1):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")


@pytest.mark.slow
def test_three_shards_one_after_another_equal_one_process(tmp_path):
    c = config()
    pipeline.run(c, tmp_path / "one", progress=False, dataset=tiny_dataset())
    outcomes = [pipeline.run(c, tmp_path / "sharded", progress=False, dataset=tiny_dataset(), shard=(i, 3))
                for i in range(3)]
    assert outcomes[0] is None and outcomes[1] is None and outcomes[2] is not None  # the last writes the report
    for name in ("members.csv", "pairs.csv", "grid.csv", "curves.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "sharded" / name).read_text(), name
    assert (tmp_path / "sharded" / "report.md").exists()


def test_lljax_report_names_missing_groups_and_rebuilds_a_finished_folder(tmp_path, capsys):
    c = config()
    pipeline.run(c, tmp_path / "part", progress=False, dataset=tiny_dataset(), shard=(0, 3))
    assert cli.main(["report", "--out", str(tmp_path / "part")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "2 of 3 groups missing" in err and "group-" in err
    pipeline.run(c, tmp_path / "whole", progress=False, dataset=tiny_dataset())
    before = (tmp_path / "whole" / "grid.csv").read_text()
    (tmp_path / "whole" / "report.md").unlink()
    assert cli.main(["report", "--out", str(tmp_path / "whole")]) == 0
    assert (tmp_path / "whole" / "report.md").exists() and (tmp_path / "whole" / "grid.csv").read_text() == before
    assert cli.main(["report", "--out", str(tmp_path / "nothing")]) == 2


def test_claims_are_exclusive_and_a_dead_holders_claim_is_taken_over(tmp_path):
    path = tmp_path / "group-0.claim"
    assert store.claim(path) and not store.claim(path)  # ours, held by a live process (this one)
    store.release(path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import json
    import socket

    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "since": 0}))
    assert store.claim(path) and json.loads(path.read_text())["pid"] == os.getpid()


@pytest.mark.slow
def test_two_shards_at_once_and_a_killed_worker_resumed_equal_one_process(tmp_path, npz):
    base = [sys.executable, "-m", "lljax", *STUDY, "--dataset", str(npz), "--no-progress"]
    subprocess.run([*base, "--out", str(tmp_path / "one")], env=cli_env(), check=True, capture_output=True,
                   timeout=300)
    procs = [subprocess.Popen([*base, "--out", str(tmp_path / "two"), "--shard", f"{i}/2"], env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    _assert_tables_close(tmp_path / "one", tmp_path / "two")
    assert (tmp_path / "one" / "members.csv").read_text() == (tmp_path / "two" / "members.csv").read_text()
    # a shard killed inside a group leaves a claim; the next run of the shard takes it over
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*base, "--out", str(killed), "--shard", "0/1", "--epochs", "20"], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 200
    while not list((killed / "groups").glob("*.claim")) if killed.exists() else True:
        if time.time() > deadline or proc.poll() is not None:
            break
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((killed / "groups").glob("*.claim")), "no claim was left behind"
    subprocess.run([*base, "--out", str(killed), "--shard", "0/1", "--epochs", "20"], env=cli_env(), check=True,
                   capture_output=True, timeout=300)
    subprocess.run([*base, "--out", str(tmp_path / "clean"), "--epochs", "20"], env=cli_env(), check=True,
                   capture_output=True, timeout=300)
    assert (killed / "members.csv").read_text() == (tmp_path / "clean" / "members.csv").read_text()
    assert not list((killed / "groups").glob("*.claim"))


@pytest.mark.slow
def test_local_workers_and_submitits_local_executor_run_whole_studies(tmp_path, npz):
    pytest.importorskip("submitit")
    base = [sys.executable, "-m", "lljax", *STUDY, "--dataset", str(npz), "--no-progress"]
    subprocess.run([*base, "--out", str(tmp_path / "one")], env=cli_env(), check=True, capture_output=True,
                   timeout=300)
    workers = subprocess.run([*base, "--out", str(tmp_path / "workers"), "--workers", "2"], env=cli_env(),
                             capture_output=True, text=True, timeout=400)
    assert workers.returncode == 0, workers.stderr[-2000:]
    for name in ("members.csv", "pairs.csv", "grid.csv"):  # the same programs: identical, not close
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "workers" / name).read_text(), name
    local = subprocess.run([*base, "--out", str(tmp_path / "local"), "--launcher", "local", "--shards", "2"],
                           env=cli_env(), capture_output=True, text=True, timeout=400)
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    assert "submitted 2 jobs (local)" in local.stdout
    assert (tmp_path / "one" / "members.csv").read_text() == (tmp_path / "local" / "members.csv").read_text()
    assert (tmp_path / "local" / "report.md").exists()


def test_job_options_do_not_enter_the_configuration():
    args = cli.parser("x", {}).parse_args(["--out", "o", "--shard", "1/2", "--workers", "3", "--slurm-time", "5"])
    assert cli.config_from_args(args, {}).same_run(Config())


def test_workers_get_the_study_as_resolved_so_a_scripts_own_presets_reach_them(tmp_path, npz):
    # a script's preset (here 'mine') is unknown to `python -m lljax`: the workers must run it, not a default study
    presets = {"mine": dict(widths=(5,), lrs=(0.1,), batch_sizes=(32,), seeds=1, epochs=2, metrics=("loss",))}
    out = tmp_path / "run"
    status = cli.main(["--preset", "mine", "--dataset", str(npz), "--out", str(out), "--workers", "1",
                       "--no-progress"], presets=presets)
    assert status == 0
    ran = Config.from_dict({k: v for k, v in json.loads((out / "config.json").read_text()).items()
                            if k != "resolved"})
    assert ran.widths == (5,) and ran.epochs == 2 and ran.dataset == str(npz)
    assert [line.split(",")[0] for line in (out / "members.csv").read_text().splitlines()[1:]] == ["5"]


def test_worker_command_round_trips_every_preset(tmp_path):
    import importlib.util
    from pathlib import Path

    from lljax import config as configs

    presets = {f"lljax {name}": values for name, values in configs.PRESETS.items()}
    for script in sorted((Path(__file__).parent.parent / "experiments").glob("*.py")):  # every script's own
        spec = importlib.util.spec_from_file_location(script.stem, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        presets.update({f"{script.stem} {name}": v for name, v in getattr(module, "PRESETS", {}).items()})
    assert len(presets) > 20
    for name, values in presets.items():
        c = Config.from_dict(values)
        command = jobs.worker_command(c, tmp_path, 1, 3)
        assert command[-2:] == ["--shard", "1/3"] and command[1:3] == ["-m", "lljax.jobs"]
        assert Config.from_dict(json.loads(command[command.index("--config") + 1])).same_run(c), name


def test_a_workers_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys):
    good = json.dumps(Config().to_dict())
    for argv, message in ((["--config", "{", "--out", str(tmp_path), "--shard", "0/1"], "Expecting"),
                          (["--config", json.dumps({"no_such_knob": 1}), "--out", str(tmp_path), "--shard", "0/1"],
                           "no_such_knob"),
                          (["--config", good, "--out", str(tmp_path), "--shard", "2/1"], "--shard")):
        assert jobs.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_local_worker_pins_itself_to_its_cores(monkeypatch, tmp_path):
    pinned = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: pinned.append((pid, list(cores))), raising=False)
    monkeypatch.setenv(jobs.CORES_ENV, "0,2")
    assert jobs.main(["--config", "{", "--out", str(tmp_path), "--shard", "0/1"]) == 2  # stops at the bad config
    assert pinned == [(0, [0, 2])]
