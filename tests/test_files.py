"""The file doors: cut logs and JSON, NaN results, flipped checkpoint bytes, two writers on one
run key, stale locks and a full disk (issue 22, items 2-4)."""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from icm_lib import files, locks
from icm_lib.codec import build_codec
from icm_lib.data.coco import CocoDetection
from icm_lib.data.sampler import CropSampler
from icm_lib.errors import (
    CheckpointError,
    DamagedFileError,
    DiskFullError,
    FileWriteError,
    ICMError,
    RunLockedError,
)
from icm_lib.files import (
    append_log,
    atomic_torch_save,
    atomic_write_json,
    load_checkpoint,
    read_json,
    read_log,
)
from icm_lib.locks import RunLock
from icm_lib.losses import mse_objective
from icm_lib.profiles import TrainConfig
from icm_lib.runtime import RunFiles
from icm_lib.trainer import train_codec

CFG = TrainConfig(
    steps=6, batch_size=2, crop=64, lr=1e-3, lmbda=0.01, checkpoint_every=2, log_every=1, seed=3
)


def _train(run_dir, scenes, stop_after=None, objective=None):
    torch.manual_seed(0)
    sampler = CropSampler(
        CocoDetection(scenes.coco_root, "train"), CFG.crop, CFG.batch_size, CFG.seed
    )
    return train_codec(
        build_codec("bmshj2018-hyperprior", N=16, M=24),
        sampler,
        CFG,
        objective or mse_objective(CFG.lmbda),
        run_dir,
        torch.device("cpu"),
        progress=False,
        stop_after=stop_after,
    )


# ---------------------------------------------------------------------- cut logs
def test_a_cut_log_is_repaired_on_resume_and_the_run_completes(tmp_path, scenes):
    _train(tmp_path, scenes, stop_after=3)
    log = tmp_path / "log.jsonl"
    with open(log, "ab") as f:  # killed while appending step 4's record
        f.write(b'{"step": 4, "loss": 0.0')
    assert [r["step"] for r in read_log(log)] == [1, 2, 3]  # a reader skips the cut line
    with pytest.warns(UserWarning, match="dropped 1 damaged record"):
        _, records = _train(tmp_path, scenes)
    assert [r["step"] for r in records] == list(range(1, 7))
    text = log.read_text()
    assert text.endswith("\n")
    assert [json.loads(line)["step"] for line in text.splitlines()] == list(range(1, 7))


def test_appending_after_a_cut_line_never_joins_records(tmp_path):
    log = tmp_path / "log.jsonl"
    append_log(log, {"step": 1, "loss": 1.0})
    with open(log, "ab") as f:
        f.write(b'{"step": 2, "lo')
    with pytest.warns(UserWarning, match="dropped 1"):
        append_log(log, {"step": 2, "loss": 0.5})
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 0.5},
    ]


def test_a_damaged_line_inside_a_log_is_skipped_with_a_warning(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"step": 1}\n\x00\x00garbage\n{"step": 2}\n')
    with pytest.warns(UserWarning, match="skipped 1 damaged"):
        assert [r["step"] for r in read_log(log)] == [1, 2]


# ---------------------------------------------------------------------- JSON results
def test_a_cut_json_file_raises_damaged_file_error_naming_it(tmp_path):
    path = tmp_path / "eval-x.json"
    atomic_write_json(path, {"bpp": 0.25, "map": 0.5})
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DamagedFileError, match="eval-x.json.*delete it") as info:
        read_json(path, what="the evaluation", fix="delete it to recompute")
    assert str(path) in str(info.value)
    with pytest.raises(DamagedFileError, match="does not exist"):
        read_json(tmp_path / "missing.json", what="the evaluation", fix="run it")


@pytest.mark.parametrize("text", ['{"bpp": NaN}', '{"bpp": -Infinity}', '{"bpp": 1e999}'])
def test_a_json_file_holding_nan_is_refused(tmp_path, text):
    path = tmp_path / "eval.json"
    path.write_text(text)
    with pytest.raises(DamagedFileError, match="eval.json"):
        read_json(path, what="the evaluation", fix="delete it to recompute")


def test_results_are_written_as_standard_json_without_nan(tmp_path):
    path = tmp_path / "study.json"
    atomic_write_json(path, {"mean": float("nan"), "ci95": float("inf"), "n": torch.tensor(1)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "ci95": None,
        "mean": None,
        "n": 1,
    }
    assert read_json(path, what="the study", fix="-")["mean"] is None


# ---------------------------------------------------------------------- content hashes
def _flip_inside(path, blob: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(blob)
    assert at > 0, "the tensor's bytes are stored as they are"
    data[at + len(blob) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_saved_codec_is_refused(tmp_path):
    codec = build_codec("bmshj2018-hyperprior", N=16, M=24)
    codec.update()
    path = tmp_path / "codec.pt"
    atomic_torch_save(codec.codec_state(), path)
    assert files.CONTENT_HASH_KEY not in load_checkpoint(path)  # checked, then left out
    weight = next(v for v in codec.codec_state()["state_dict"].values() if v.numel() > 1000)
    _flip_inside(path, weight.numpy().tobytes())
    with pytest.raises(CheckpointError, match="codec.pt is damaged.*delete it"):
        load_checkpoint(path)


def test_a_flipped_byte_in_a_checkpoint_stops_the_resume(tmp_path, scenes):
    _train(tmp_path, scenes, stop_after=2)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    blob = ckpt["codec"]["state_dict"]["g_a.0.weight"].numpy().tobytes()
    _flip_inside(tmp_path / "checkpoint.pt", blob)
    with pytest.raises(CheckpointError, match="checkpoint.pt is damaged"):
        _train(tmp_path, scenes)


def test_files_saved_before_content_hashes_still_load(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"w": torch.arange(2000.0), "step": 4}, path)  # no hash: an older icm_lib
    assert load_checkpoint(path)["step"] == 4


def test_the_content_hash_ignores_the_device_and_serialisation_but_not_a_value():
    state = {"a": torch.arange(6.0).view(2, 3)[:, 1:], "b": [1, 2.5, None, "x"], 3: True}
    h = files.content_hash(state)
    assert files.content_hash({3: True, "b": [1, 2.5, None, "x"], "a": state["a"].clone()}) == h
    assert files.content_hash({**state, "b": [1, 2.5000001, None, "x"]}) != h
    assert files.content_hash({**state, "a": state["a"].to(torch.float64)}) != h


def test_a_flipped_stride_byte_in_a_saved_codec_loads_its_exact_weights(tmp_path):
    """Found by the fuzzer (1 of 1,000 flipped bytes of a saved hyperprior): a flip in the
    pickled metadata gave a one-element tensor the stride 9, which the content hash could not
    read (a raw ``RuntimeError``); the values are the same, so the hash is too."""
    base = torch.zeros(10)
    base[0] = 2.5
    odd = base.as_strided((1,), (9,))
    assert odd.stride() == (9,) and odd.contiguous().stride() == (9,)
    assert files.content_hash({"w": odd}) == files.content_hash({"w": torch.tensor([2.5])})
    path = tmp_path / "odd.pt"
    files.atomic_torch_save({"w": odd.clone()}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.tensor([2.5]))


def test_a_damaged_recognizer_cache_is_trained_again(tmp_path):
    from types import SimpleNamespace

    from icm_lib.profiles import RecognitionConfig
    from icm_lib.recognition.training import _load_or_train
    from icm_lib.tasks import DETECTION

    trained = []

    def train_fn(model, *args):
        trained.append(1)
        with torch.no_grad():
            model.weight.fill_(0.5)
        return [], [], 0.0  # the loss log, the val curve, the training seconds

    def run():
        model = torch.nn.Linear(40, 40)
        data = SimpleNamespace(root=tmp_path / "data", num_classes=3)
        _, report = _load_or_train(
            "toy", DETECTION, model, lambda m: m, train_fn, lambda *a: {"x": 1.0},
            RecognitionConfig(), data, data, 32, tmp_path, torch.device("cpu"), 0, False,
        )  # fmt: skip
        return model, report

    model, report = run()
    assert not report["cached"] and len(trained) == 1
    path = tmp_path / os.path.basename(report["path"])
    _flip_inside(path, torch.full((40,), 0.5).numpy().tobytes())
    with pytest.warns(UserWarning, match="damaged.*training the recognizer again"):
        model, report = run()
    assert not report["cached"] and len(trained) == 2
    model, report = run()
    assert report["cached"] and len(trained) == 2 and bool((model.weight == 0.5).all())
    assert not path.with_name(path.name + ".lock").exists()


# ---------------------------------------------------------------------- one writer per run key
_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    from icm_lib.codec import build_codec
    from icm_lib.data.coco import CocoDetection
    from icm_lib.data.sampler import CropSampler
    from icm_lib.losses import mse_objective
    from icm_lib.profiles import TrainConfig
    from icm_lib.runtime import state_fingerprint
    from icm_lib.trainer import train_codec

    coco, run_dir, go = sys.argv[1:4]
    cfg = TrainConfig(steps=6, batch_size=2, crop=64, lr=1e-3, lmbda=0.01, checkpoint_every=2,
                      log_every=1, seed=3)
    sampler = CropSampler(CocoDetection(coco, "train"), cfg.crop, cfg.batch_size, cfg.seed)
    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=16, M=24)
    mse = mse_objective(cfg.lmbda)
    held = []

    def objective(codec, branch, x):
        # The lock holder's first step waits until the other process has said it waits (its
        # stderr file), so the two overlap however the machine schedules them (a loaded CI
        # machine once took over 2 min to get the other one there).
        if not held:
            held.append(True)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not any(
                "is being written by" in e.read_text() for e in Path(go).parent.glob("err.*")
            ):
                time.sleep(0.05)
        return mse(codec, branch, x)

    Path(f"{go}.ready.{os.getpid()}").touch()  # imported and built: ready to start
    while not Path(go).exists():  # both processes start training at the same moment
        time.sleep(0.01)
    codec, log = train_codec(codec, sampler, cfg, objective, run_dir, torch.device("cpu"),
                             progress=False)
    print("FINGERPRINT", state_fingerprint(codec.model.state_dict()), len(log))
    """
)


def test_two_processes_on_one_run_key_write_each_record_once(tmp_path, scenes):
    run_dir, go = tmp_path / "run", tmp_path / "go"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "ICM_LOCK_TIMEOUT": "900"}
    args = [sys.executable, str(script), str(scenes.coco_root), str(run_dir), str(go)]
    errs = [tmp_path / f"err.{i}" for i in range(2)]
    procs = []
    for err in errs:
        with err.open("w") as f:  # the child keeps its own descriptor
            procs.append(
                subprocess.Popen(args, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
            )
    deadline = time.monotonic() + 120  # both imported (a loaded machine takes seconds) ...
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # ... then both start at once: one trains, the other waits for its lock
    outs = [(p.communicate(timeout=900)[0], err.read_text()) for p, err in zip(procs, errs)]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    prints = [next(x for x in out.splitlines() if x.startswith("FINGERPRINT")) for out, _ in outs]
    assert prints[0] == prints[1] and prints[0].endswith(" 6")  # same weights, full log
    waited = [err for _, err in outs if "is being written by pid" in err]
    assert len(waited) == 1 and "waiting up to" in waited[0]  # the second one said who
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # every record once
    assert not (run_dir / "writer.lock").exists()


def test_the_claim_is_released_when_training_fails(tmp_path, scenes):
    def broken(codec, branch, x):
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        _train(tmp_path, scenes, objective=broken)
    assert not (tmp_path / "writer.lock").exists()


def test_a_held_lock_names_its_holder(tmp_path):
    path = tmp_path / "writer.lock"
    with RunLock(path):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        assert RunFiles(tmp_path, 1, 1, 1).running["token"] == holder["token"]  # for launchers
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on host .*writer.lock"):
            RunLock(path, timeout=0).acquire()
        with pytest.raises(RunLockedError):  # waits, then gives up
            RunLock(path, timeout=0.3, poll=0.1).acquire()
    assert not path.exists() and RunFiles(tmp_path, 1, 1, 1).running is None
    with pytest.raises(KeyError), RunLock(path):
        raise KeyError("released on an exception too")
    assert not path.exists()


def test_a_waiter_names_the_holder_even_when_it_sees_the_lock_before_its_first_write(
    tmp_path, monkeypatch, capsys
):
    """A lock file is created, then written: a waiter that reads it in between (the race the
    two-writer test hit on CI) says who holds it once it can, not 'a process creating it'."""
    path = tmp_path / "writer.lock"
    path.touch()  # created, not written yet
    holder = {"pid": 1, "host": "node-17", "machine": "node-17/x", "started": time.time()}
    reads = []
    original = RunLock.read

    def read(p):  # the holder writes its JSON after the first look, leaves after the second
        seen = original(p)
        reads.append(seen[0])
        if len(reads) == 1:
            path.write_text(json.dumps(holder))
        elif len(reads) == 2:
            path.unlink()
        return seen

    monkeypatch.setattr(RunLock, "read", staticmethod(read))
    RunLock(path, timeout=60, poll=0.2).acquire().release()
    assert reads[:2] == [None, holder]
    err = capsys.readouterr().err
    assert "is being written by pid 1 on host node-17" in err and "creating the lock" not in err

    path.touch()  # and one that stays unreadable is reported after a few polls, not silently
    monkeypatch.setattr(RunLock, "read", staticmethod(original))
    with pytest.raises(RunLockedError, match="creating the lock"):
        RunLock(path, timeout=0.5, poll=0.05).acquire()
    assert "is being written by a process that is creating the lock" in capsys.readouterr().err


def _in_child(work) -> int:
    """Run ``work()`` in a forked child process (no new interpreter: no import time); return
    the child's exit status as ``subprocess`` gives it (negative: killed by that signal).
    ``work`` must not run torch kernels: a forked child of a process whose OpenMP pool ran may
    hang in them."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def test_a_lock_left_by_a_killed_process_on_this_machine_is_recovered(tmp_path):
    path = tmp_path / "writer.lock"

    def claim_and_die():
        RunLock(path).acquire()
        os.kill(os.getpid(), signal.SIGKILL)  # no release, as kill -9 leaves it

    assert _in_child(claim_and_die) == -signal.SIGKILL and path.exists()
    dead = json.loads(path.read_text())["pid"]
    assert dead != os.getpid()
    with pytest.warns(UserWarning, match=f"stale.*process {dead} on this machine is gone"):
        lock = RunLock(path, timeout=0).acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_a_lock_from_another_host_is_stale_only_once_its_heartbeat_stops(tmp_path):
    path = tmp_path / "writer.lock"
    started = time.time() - 3600
    holder = {"pid": 1, "host": "node-17", "machine": "node-17/x", "started": started}
    path.write_text(json.dumps(holder))
    with pytest.raises(RunLockedError, match="pid 1 on host node-17"):  # refreshed just now
        RunLock(path, timeout=0, stale_after=600).acquire()
    os.utime(path, (started, started))  # not refreshed for an hour
    with pytest.warns(UserWarning, match="node-17 has not refreshed it"):
        RunLock(path, timeout=0, stale_after=600).acquire().release()
    assert not path.exists()


def test_a_held_lock_is_kept_fresh_for_other_hosts(tmp_path, monkeypatch):
    path = tmp_path / "writer.lock"
    with RunLock(path, stale_after=1.0):
        time.sleep(1.6)  # longer than the bound: only the heartbeat keeps it held
        monkeypatch.setattr(locks, "_machine_id", lambda: "another-node")
        with pytest.raises(RunLockedError):
            RunLock(path, timeout=0, stale_after=1.0).acquire()


# ---------------------------------------------------------------------- a full disk
def _disk_full(monkeypatch):
    def write(self, data):
        self.error = OSError(errno.ENOSPC, "No space left on device")
        raise self.error

    monkeypatch.setattr(files._Sink, "write", write)


def test_a_json_file_is_a_line_per_record_not_a_line_per_number(tmp_path):
    record = {
        "runs": [
            {"seed": 0, "log": [{"step": 1, "loss": 2.5}], "images": {"bits": [8.0, 16.0]}},
            {"seed": 1, "log": [], "images": {"dt": [[[1, 0.5, 3, 0]], []]}},
        ],
        "notes": [],
        "n": 2,
    }
    path = atomic_write_json(tmp_path / "study.json", record)
    text = path.read_text()
    assert json.loads(text) == record and text.endswith("}\n")
    lines = text.splitlines()
    assert (
        '        "bits": [8.0, 16.0]' in lines and '        "dt": [[[1, 0.5, 3, 0]], []]' in lines
    )
    assert '        {"loss": 2.5, "step": 1}' in lines and '  "n": 2,' in lines
    assert len(lines) == 22


def test_a_full_disk_is_reported_with_sizes_and_keeps_the_previous_json(tmp_path, monkeypatch):
    path = tmp_path / "study.json"
    atomic_write_json(path, {"v": 1})
    before = path.read_bytes()
    _disk_full(monkeypatch)
    payload = {"v": 2, "pad": "x" * 5000}
    needed = len(files.json_text(payload).encode())
    with pytest.raises(DiskFullError) as info:
        atomic_write_json(path, payload)
    message = str(info.value)
    assert str(path) in message and f"{needed:,} bytes" in message and "are free" in message
    assert isinstance(info.value, FileWriteError) and isinstance(info.value, ICMError)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"w": torch.zeros(10), "step": 2}, path)
    _disk_full(monkeypatch)
    with pytest.raises(DiskFullError, match=r"checkpoint.pt: the disk .* is full.*needs [\d,]+ b"):
        atomic_torch_save({"w": torch.ones(100_000), "step": 4}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 2 and sorted(tmp_path.iterdir()) == [path]


def test_a_real_failed_write_inside_torch_save_is_reported(tmp_path):
    """A real OS error (the file size limit: EFBIG) raised under torch's C++ writer."""
    import resource

    path, report = tmp_path / "codec.pt", tmp_path / "report.txt"
    atomic_torch_save({"w": torch.zeros(4), "step": 1}, path)
    big = {"w": torch.ones(1_000_000), "step": 2}  # made here: no torch kernel after the fork

    def save_past_the_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            atomic_torch_save(big, path)
            message = "SAVED"
        except FileWriteError as exc:
            message = f"{type(exc).__name__}: {exc}"
        fd = os.open(report, os.O_WRONLY | os.O_CREAT)
        os.write(fd, message.encode())
        os.close(fd)

    assert _in_child(save_past_the_limit) == 0
    message = report.read_text()
    assert message.startswith("FileWriteError: cannot write") and str(path) in message
    assert "needs 4,00" in message  # a million float32 and the archive around them
    assert load_checkpoint(path)["step"] == 1 and sorted(tmp_path.iterdir()) == [path, report]


def test_a_failed_log_append_is_reported(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    append_log(log, {"step": 1})
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if "a" in mode else f

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(DiskFullError, match="log.jsonl.*quota"):
        append_log(log, {"step": 2})
    monkeypatch.undo()
    assert read_log(log) == [{"step": 1}]


def test_the_readme_lists_every_file_door():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("**File doors.**") :].split("\n\n")[1]
    doors = {line.split("|")[2].strip() for line in table.splitlines()[2:]}
    assert doors >= {  # each tested above
        "a last line cut by a kill or a full disk, a damaged line",
        "an unfinished last line",
        "cut, not UTF-8, not JSON, missing",
        "`NaN`, `±Infinity`, `1e999`",
        "a flipped byte (content ≠ its saved hash)",
        "no hash",
        "a second process training it",
        "left by a killed process",
        "a full disk or quota (`ENOSPC`, `EDQUOT`), another failed write",
    }


# ---------------------------------------------------------------------- load or compute
def test_load_or_compute_loads_what_is_finished_and_computes_once_under_the_guard():
    from contextlib import contextmanager

    events, store = [], {}

    @contextmanager
    def guard():
        events.append("lock")
        yield
        events.append("unlock")

    def load():
        events.append("load")
        return store.get("v")

    def compute():
        events.append("compute")
        store["v"] = 42
        return 42

    kw = dict(guard=guard, before=lambda: events.append("before"))
    assert files.load_or_compute(load, compute, **kw) == 42
    # asked again inside the lock: the holder it waited for may have finished the result
    assert events == ["load", "before", "lock", "load", "compute", "unlock"]
    events.clear()
    assert files.load_or_compute(load, compute, **kw) == 42
    assert events == ["load"]  # finished: loaded, nothing refused, nothing locked


def test_load_or_compute_takes_what_the_lock_holder_finished():
    from contextlib import contextmanager

    store = {}

    @contextmanager
    def guard():  # another process held the lock and finished the result meanwhile
        store["v"] = "theirs"
        yield

    def compute():
        raise AssertionError("computed although the holder finished it")

    assert files.load_or_compute(lambda: store.get("v"), compute, guard=guard) == "theirs"


def test_a_refusing_session_stops_before_computing_and_a_cut_result_is_recomputed(tmp_path):
    from icm_lib.errors import NotCachedError

    def refuse():
        raise NotCachedError("cached only")

    with pytest.raises(NotCachedError):
        files.load_or_compute(lambda: None, lambda: 1 / 0, before=refuse)
    path = tmp_path / "r.json"
    path.write_text('{"value": 1')  # cut

    def load():
        try:
            return files.read_json(path, what="a result", fix="recompute")
        except DamagedFileError:
            return None

    def compute():
        files.atomic_write_json(path, {"value": 2})
        return {"value": 2}

    assert files.load_or_compute(load, compute) == {"value": 2}
    assert json.loads(path.read_text()) == {"value": 2}


def test_every_cache_key_is_spelled_by_keyed_path():
    from icm_lib.runtime import config_hash, keyed_path

    parts = {"cfg": {"a": 1}, "data": "embedded/tag/det_train"}
    assert keyed_path("/c", "detector-resnet18", parts, ".pt").name == (
        f"detector-resnet18-{config_hash(parts)}.pt"
    )


def test_written_files_get_the_umask_s_permissions_or_keep_the_replaced_file_s(tmp_path):
    """mkstemp makes an owner-only file; a results file or codec must be readable as any other
    file the user writes (a shared group on a cluster)."""
    old = os.umask(0o027)
    try:
        new = atomic_write_json(tmp_path / "new.json", {"v": 1})
        saved = atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "codec.pt")
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
        assert stat.S_IMODE(saved.stat().st_mode) == 0o640
        new.chmod(0o604)
        atomic_write_json(new, {"v": 2})
        assert stat.S_IMODE(new.stat().st_mode) == 0o604 and json.loads(new.read_text()) == {"v": 2}
        new.chmod(0o1640)  # the sticky bit (like setuid / setgid) is not carried over
        atomic_write_json(new, {"v": 3})
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
        assert sorted(p.name for p in tmp_path.iterdir()) == ["codec.pt", "new.json"]
    finally:
        assert os.umask(old) == 0o027  # the writes left the process's umask alone
