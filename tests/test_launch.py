"""A study's runs as jobs (icm_lib.jobs, icm_lib.launch): the local pool end to end with a killed job, SLURM
job scripts through fake sbatch / squeue, what a resubmitted study submits, the errors."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from icm_lib.errors import LaunchError
from icm_lib.jobs import (
    JobSpec,
    LaunchJob,
    RunCall,
    StudyJob,
    call_tasks,
    done_marker,
    label_group,
    plan_jobs,
    point_call,
    torchrun_command,
)
from icm_lib.launch import JobStatus, Launcher, LaunchOptions, parse_time, submission_order
from icm_lib.locks import RunLock
from icm_lib.profiles import get_profile
from icm_lib.results import StudyFile

# ---------------------------------------------------------------------- a fake SLURM
FAKE_SBATCH = """#!/bin/bash
# records the script, answers like sbatch; exits 1 with $FAKE_SLURM/refuse's text if present
if [ -f "$FAKE_SLURM/refuse" ]; then cat "$FAKE_SLURM/refuse" >&2; exit 1; fi
n=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 ))
echo $n > "$FAKE_SLURM/next"
cp "$1" "$FAKE_SLURM/sbatch-$n.sh"
echo "Submitted batch job $n"
"""
FAKE_SQUEUE = """#!/bin/bash
# this user's jobs: the lines of $FAKE_SLURM/queue ("<id>|<STATE>")
cat "$FAKE_SLURM/queue" 2>/dev/null
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch``, ``squeue`` and ``srun`` stand-ins on PATH; returns their state folder."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in {
        "sbatch": FAKE_SBATCH,
        "squeue": FAKE_SQUEUE,
        "srun": "#!/bin/bash\n",
    }.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    return state


def _jobs(root: Path, names: str) -> list[LaunchJob]:
    """Jobs of runs that are never executed here (the launcher's bookkeeping only)."""
    return [
        LaunchJob(f"point-{n}", point_call("seg", "baseline", 0.5, i), root / "icm" / n)
        for i, n in enumerate(names)
    ]


SLURM = dict(
    launcher="slurm",
    partition="gpu",
    time="2-00:00:00",
    gpus_per_run=2,
    cpus_per_run=16,
    mem="64G",
    account="icm",
    slurm_args={"constraint": "h100"},
    setup=["module load cuda"],
    wait=False,
)


def test_slurm_jobs_are_sbatch_scripts_and_a_resubmitted_study_submits_only_the_rest(
    fake_slurm, tmp_path
):
    profile, data = get_profile("smoke"), tmp_path / "data"
    jobs = _jobs(data, "abcde")
    launcher = Launcher(LaunchOptions(**SLURM), profile, data, "study-smoke")
    first = launcher.run(jobs)
    assert first.submitted == [j.name for j in jobs] and first.counts["queued"] == 5

    # the job script: the cluster's options, requeue signal, the job's own Python
    script = (fake_slurm / "sbatch-101.sh").read_text()
    for flag in (
        "--partition=gpu",
        "--time=2880",
        "--gpus-per-node=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=16",
        "--mem=64G",
        "--account=icm",
        "--constraint=h100",
        "--signal=USR2@90",
        "--job-name=icm-point-a",
    ):
        assert f"#SBATCH {flag}" in script, flag
    assert "module load cuda" in script
    assert f"{sys.executable} -u -m submitit.core._submit" in script
    assert subprocess.run(["bash", "-n", fake_slurm / "sbatch-101.sh"]).returncode == 0
    # ... and the call it runs: the run's JobSpec, torchrun over the job's 2 GPUs
    registry = launcher.read_registry()
    pickled = Path(registry["point-a"].stdout).parent / "101_submitted.pkl"
    delayed = pickle.loads(pickled.read_bytes())
    spec = delayed.args[0]
    assert isinstance(delayed.function, StudyJob) and hasattr(delayed.function, "checkpoint")
    assert isinstance(spec, JobSpec) and spec.call == jobs[0].call and spec.profile == profile
    assert (spec.processes, spec.threads, spec.data_dir) == (2, 8, str(data.resolve()))
    assert torchrun_command("s.pkl", 2)[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "icm_lib.jobs", "job", "s.pkl",
    ]  # fmt: skip

    # later: a runs, b waits in the queue, c's job ended without finishing, d is done, e's run is
    # trained by a process outside the study; f is new
    (fake_slurm / "queue").write_text("101|RUNNING\n102|PENDING\n999|RUNNING\n")
    d = jobs[3]
    d.run_dir.mkdir(parents=True)
    (d.run_dir / "codec.pt").write_bytes(b"")
    done_marker(launcher.dir, d.name).parent.mkdir(parents=True, exist_ok=True)
    done_marker(launcher.dir, d.name).write_text(json.dumps({"run_dir": str(d.run_dir)}))
    Path(registry["point-c"].stderr).parent.mkdir(parents=True, exist_ok=True)
    Path(registry["point-c"].stderr).write_text("Traceback ...\nRuntimeError: CUDA out of memory\n")
    jobs += _jobs(data, "f")
    with RunLock(jobs[4].run_dir / "writer.lock"):
        status = Launcher(replace(LaunchOptions(**SLURM), status_only=True), profile, data, "s")
        states = {s.name[-1]: s for s in status.status(jobs).statuses}
        assert {k: s.state for k, s in states.items()} == {
            "a": "running", "b": "queued", "c": "failed", "d": "done", "e": "running",
            "f": "todo",
        }  # fmt: skip
        assert "CUDA out of memory" in states["c"].detail
        assert states["c"].log == registry["point-c"].stderr
        assert f"pid {os.getpid()}" in states["e"].detail
        again = Launcher(LaunchOptions(**SLURM), profile, data, "study-smoke").run(jobs)
    assert again.submitted == ["point-c", "point-f"]  # neither done nor running
    assert sorted((fake_slurm / "next").read_text().split()) == ["107"]
    attempts = {n[-1]: r.attempts for n, r in launcher.read_registry().items()}
    assert attempts == {"a": 1, "b": 1, "c": 2, "d": 1, "e": 1, "f": 1}
    # a PatchGAN finetuning runs in one process: one GPU, its share of the cores
    gan = LaunchJob("gan-full-seed0-x", RunCall("gan", {"seed": 0, "preset": "full"}), None)
    Launcher(LaunchOptions(**SLURM), profile, data, "gan-smoke").run([gan])
    script = (fake_slurm / "sbatch-108.sh").read_text()
    assert "#SBATCH --gpus-per-node=1\n" in script and "#SBATCH --cpus-per-task=8\n" in script


def test_runs_started_together_do_not_compute_the_same_pseudo_labels(
    smoke_env, fake_slurm, tmp_path
):
    """With two places, a study of two seeds starts one run of each seed (each computing its
    own seed's pseudo-labels), not two λ of seed 0 computing the same labels side by side; once
    a seed's first run is done its later runs go in the study's order."""
    from icm_lib.study import study_calls

    profile, data = get_profile("smoke"), tmp_path / "data"
    calls = study_calls("rd", profile, [0, 1], ["seg"], ["baseline"], reference_curve=False)
    jobs = [
        LaunchJob(f"point-{i}", c, data / "icm" / str(i), (), label_group(c))
        for i, c in enumerate(calls)
    ]
    assert [j.labels for j in jobs] == [("seg", 0)] * 4 + [("seg", 1)] * 4
    assert [j.labels for j in plan_jobs(smoke_env, calls)] == [j.labels for j in jobs]
    assert label_group(study_calls("rd", profile, [0], ["seg"], ["baseline"])[0]) is None  # MSE
    assert label_group(study_calls("ablation", profile, [1], ["det"])[0]) == ("det", 1)
    capped = Launcher(LaunchOptions(**{**SLURM, "workers": 2}), profile, data, "s").run(jobs)
    assert capped.submitted == ["point-0", "point-4"]  # seed 0's first λ, seed 1's first λ

    def order(**states):
        status = {j.name: JobStatus(j.name, states.get(j.name[6:], "todo")) for j in jobs}
        ready = [j for j in jobs if status[j.name].state == "todo"]
        return [j.name[6:] for j in submission_order(jobs, ready, status)]

    assert order() == ["0", "4", "1", "2", "3", "5", "6", "7"]
    # seed 0's labels being computed by its first run, seed 1's not started: seed 1 first
    assert order(**{"0": "running"}) == ["4", "1", "2", "3", "5", "6", "7"]
    # both being computed: the study's order (a third place is better used than left idle)
    assert order(**{"0": "running", "4": "queued"}) == ["1", "2", "3", "5", "6", "7"]
    # seed 0's labels all stored: its runs go first, in order
    assert order(**{"0": "done", "4": "running"}) == ["1", "2", "3", "5", "6", "7"]
    assert order(**{"4": "done", "0": "running"}) == ["5", "6", "7", "1", "2", "3"]


def test_the_launchers_say_what_to_do(fake_slurm, tmp_path, monkeypatch):
    profile, data = get_profile("smoke"), tmp_path / "data"
    assert [parse_time(t) for t in ("90", "10:30", "1:30:00", "1-12", "2-00:00:00")] == [
        90, 11, 90, 2160, 2880,
    ]  # fmt: skip
    with pytest.raises(LaunchError, match="not a SLURM time limit"):
        parse_time("two days")
    with pytest.raises(LaunchError, match="needs --time"):
        LaunchOptions("slurm").check()
    with pytest.raises(LaunchError, match="--partition is an option of --launcher slurm"):
        LaunchOptions("pool", partition="gpu").check()
    with pytest.raises(LaunchError, match="add --launcher slurm"):
        from icm_lib.study import main

        main(["--profile", "smoke", "--partition", "gpu", "--time", "10"])
    # sbatch refuses: its message and what to check
    (fake_slurm / "refuse").write_text("sbatch: error: invalid partition specified: nope\n")
    launcher = Launcher(LaunchOptions(**SLURM), profile, data, "study-smoke")
    with pytest.raises(LaunchError, match="(?s)sbatch refused.*invalid partition.*--partition"):
        launcher.run(_jobs(data, "a"))
    # no SLURM on this machine
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(LaunchError, match="needs SLURM's sbatch, squeue, srun on PATH"):
        Launcher(LaunchOptions(**SLURM), profile, data, "study-smoke")
    # no submitit
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(LaunchError, match="pip install submitit"):
        Launcher(LaunchOptions("pool", device="cpu"), profile, data, "study-smoke")


def _comparable(file: StudyFile) -> dict:
    """A results file without what differs between two invocations of the same runs: wall and
    training times, the creation time, the run folders' location (their keys stay)."""

    def strip(obj, key=None):
        if isinstance(obj, dict):
            return {
                k: strip(v, k)
                for k, v in obj.items()
                if k not in ("seconds", "created", "commit", "wall_hours_this_invocation")
                and k != "compute_hours_in_runs"
            }
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return Path(obj).name if key == "run_dir" and obj else obj

    return strip(file.to_json())


def test_a_parallel_smoke_study_with_a_killed_job_equals_the_sequential_one(smoke_env, tmp_path):
    """Two jobs at once on the local pool; one is killed (SIGKILL) after its first checkpoint,
    reported failed with its log, and the study submitted again trains only that run, from its
    checkpoint: the results file equals the sequential study's."""
    from icm_lib.study import run_study

    smoke = get_profile("smoke")
    seg = replace(smoke.icm.seg, steps=12, checkpoint_every=2)  # room to kill one midway
    profile = replace(smoke, icm=replace(smoke.icm, seg_lambdas=(0.05, 5.0), seg=seg))
    roots = {k: tmp_path / k for k in ("seq", "par")}
    for root in roots.values():  # the prepared caches (data, machines, reference), no runs
        ignore = shutil.ignore_patterns("icm", "gan", "launch")
        shutil.copytree(smoke_env.cache_dir.parent, root / "data", ignore=ignore)
    cpu, grid = torch.device("cpu"), ([0], ["seg"], ["baseline"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two jobs on two cores
    try:
        t0 = time.perf_counter()
        sequential = run_study(
            profile, *grid, roots["seq"] / "data", roots["seq"], cpu, False, False
        )
        t_seq = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert sequential.complete and len(sequential.runs) == 2

    runs, killed = roots["par"] / "data" / "cache" / "icm", {}

    def kill_one_midway():
        deadline = time.monotonic() + 900
        while not killed and time.monotonic() < deadline:
            for checkpoint in runs.glob("*/checkpoint.pt"):
                try:
                    holder = json.loads((checkpoint.parent / "writer.lock").read_text())
                except (OSError, ValueError):
                    continue
                os.kill(holder["pid"], signal.SIGKILL)  # the job's process (ours)
                killed.update(
                    run=checkpoint.parent, codec=(checkpoint.parent / "codec.pt").exists()
                )
                return
            time.sleep(0.02)

    options = LaunchOptions("pool", workers=2, device="cpu", poll=0.2)
    watcher = threading.Thread(target=kill_one_midway, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    with pytest.raises(LaunchError) as failed:
        run_study(profile, *grid, roots["par"] / "data", roots["par"], cpu, False, False, options)
    watcher.join(timeout=5)
    assert killed and not killed["codec"]  # killed after a checkpoint, before the end
    report = failed.value.report
    assert report.peak_running == 2  # both jobs ran at once
    assert (report.counts["done"], report.counts["failed"]) == (1, 1)
    [bad] = report.failed
    assert killed["run"].name in bad.name and Path(bad.log).is_file()
    assert bad.log in str(failed.value) and "killed" in str(failed.value)
    assert "run the same command again" in str(failed.value)
    partial = StudyFile.read(StudyFile.path(roots["par"], "smoke"))
    assert not partial.complete and len(partial.runs) == 1  # the finished run is collected

    parallel = run_study(
        profile, *grid, roots["par"] / "data", roots["par"], cpu, False, False, options
    )
    t_par = time.perf_counter() - t0
    launch_dir = roots["par"] / "data" / "launch" / "smoke"
    attempts = {
        n: r["attempts"] for n, r in json.loads((launch_dir / "jobs.json").read_text()).items()
    }
    assert attempts == {bad.name: 2, next(n for n in attempts if n != bad.name): 1}
    assert parallel.complete and _comparable(parallel) == _comparable(sequential)
    assert parallel.run_keys == sequential.run_keys
    for marker in (launch_dir / "done").glob("*.json"):  # the run folders the launcher expected
        done = json.loads(marker.read_text())
        assert done["name"].startswith(f"point-{Path(done['run_dir']).name}-")
    print(f"sequential {t_seq:.0f} s; pool of 2 with a killed job resubmitted {t_par:.0f} s")


def test_study_status_lists_each_run_without_submitting(smoke_env, tmp_path, capsys):
    """``--status`` on a study never launched: every run to submit, nothing submitted."""
    from icm_lib.study import main

    data = tmp_path / "data"
    ignore = shutil.ignore_patterns("icm", "gan", "launch")
    shutil.copytree(smoke_env.cache_dir.parent, data, ignore=ignore)
    args = ["--profile", "smoke", "--seeds", "0", "--tasks", "seg", "--data-dir", str(data)]
    report = main([*args, "--no-progress", "--device", "cpu", "--status", "--study", "gan"])
    assert [s.state for s in report.statuses] == ["todo"] + ["waiting"] * 3  # baseline first
    assert report.submitted == [] and not (data / "cache" / "icm").exists()
    out = capsys.readouterr()
    assert "gan-smoke (status): 0/4 done" in out.err and "waiting" in out.out


def test_the_torchrun_entry_refuses_a_missing_spec(tmp_path):
    """The torchrun entry refuses a missing spec with what to do."""
    from icm_lib.jobs import main

    with pytest.raises(LaunchError, match="no job spec"):
        main(["job", str(tmp_path / "missing.pkl")])


def test_run_calls_of_a_study_are_its_grid():
    from icm_lib.study import study_calls

    smoke = get_profile("smoke")
    calls = study_calls("rd", smoke, [0], ["det", "seg"], ["baseline", "aux-enc"])
    assert len(calls) == 2 + 2 * 2 * 4  # the MSE curve, then seed x task x variant x λ
    assert calls[0].args["variant"] == "mse" and calls[0].args["eval_tasks"] == ("det", "seg")
    roi = [c.args["roi"] for c in calls if c.args["variant"] == "baseline"]
    assert roi == [True] * 4 + [False] * 4  # the ROI baseline on detection only
    gan = study_calls("gan", smoke, [0, 1])
    assert [c.args for c in gan[:3]] == [
        {"seed": 0, "preset": p} for p in ("full", "limited", "no-adv")
    ]
    assert gan[0].needs == (point_call("seg", "baseline", 0.05, 0),)  # the lowest λ
    ablation = study_calls("ablation", smoke, [0], ["det"])
    assert [c.args["variant"] for c in ablation] == list(smoke.ablation.variants)
    assert all(isinstance(c, RunCall) for c in calls + gan + ablation)
    # what each job loads: the recognizers its run uses, no more (a seg-only study's jobs
    # never train the detector; under torchrun nothing is loaded outside the ranks' barrier)
    used = [call_tasks(smoke, c) for c in calls]
    assert used[0] == ("det", "seg")  # the MSE curve: only its scoring tasks
    assert set(used[2:]) == {("det",), ("seg",)}
    seg_only = study_calls("rd", smoke, [0], ["seg"], ["baseline"])
    assert {call_tasks(smoke, c) for c in seg_only} == {("seg",)}
    assert {call_tasks(smoke, c) for c in gan} == {("seg",)}
    assert {call_tasks(smoke, c) for c in ablation} == {("det",)}


RUNNING_SBATCH = """#!/bin/bash
# submits like sbatch, then runs the script at once in the background with SLURM's variables
n=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 ))
echo $n > "$FAKE_SLURM/next"
cp "$1" "$FAKE_SLURM/sbatch-$n.sh"
SLURM_JOB_ID=$n SLURM_JOBID=$n SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1 SLURM_NODEID=0 \\
SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_JOB_NODELIST=localhost \\
    setsid bash "$1" > "$FAKE_SLURM/job-$n.out" 2>&1 < /dev/null &
echo $! > "$FAKE_SLURM/pid-$n"
echo "Submitted batch job $n"
"""
LISTING_SQUEUE = """#!/bin/bash
# the fake jobs whose script still runs
for f in "$FAKE_SLURM"/pid-*; do
    [ -e "$f" ] || continue
    kill -0 "$(cat "$f")" 2>/dev/null && echo "${f##*pid-}|RUNNING"
done
exit 0
"""
RUNNING_SRUN = """#!/bin/bash
# srun's --output / --error (with %j and %t), then the command
out=/dev/null; err=/dev/null
while [[ "$1" == --* ]]; do
    case "$1" in
        --output) out="$2"; shift 2;; --error) err="$2"; shift 2;; *) shift;;
    esac
done
out=${out//%j/$SLURM_JOB_ID}; out=${out//%t/0}; err=${err//%j/$SLURM_JOB_ID}; err=${err//%t/0}
exec "$@" >> "$out" 2>> "$err"
"""


@pytest.mark.slow
def test_a_slurm_job_script_runs_its_run_with_torchrun(smoke_env, fake_slurm, tmp_path):
    """The job script the launcher writes, run here as SLURM would (the fake sbatch runs it at
    once with SLURM's variables, srun runs its command): the job is torchrun over 2 processes
    (gloo on the CPU), trains its run, writes its done marker, and the study collects it."""
    from icm_lib.study import run_study

    bin_dir = Path(os.environ["PATH"].split(os.pathsep)[0])
    for name, text in {
        "sbatch": RUNNING_SBATCH,
        "squeue": LISTING_SQUEUE,
        "srun": RUNNING_SRUN,
    }.items():
        (bin_dir / name).write_text(text)
    smoke = get_profile("smoke")
    profile = replace(smoke, icm=replace(smoke.icm, seg_lambdas=(0.05,)))
    data = tmp_path / "data"
    ignore = shutil.ignore_patterns("icm", "gan", "launch")
    shutil.copytree(smoke_env.cache_dir.parent, data, ignore=ignore)
    options = LaunchOptions("slurm", time="30", gpus_per_run=2, device="cpu", poll=1.0)
    cpu = torch.device("cpu")
    study = run_study(
        profile, [0], ["seg"], ["baseline"], data, tmp_path, cpu, False, False, options
    )
    assert study.complete and len(study.runs) == 1
    [record] = Launcher(options, profile, data, "s").read_registry().values()
    log = Path(record.stdout).read_text()
    assert "process 1 of 2" in log and "process 2 of 2" in log and "done in" in log
    assert "--nproc_per_node=2" in log
