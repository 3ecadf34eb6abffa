"""``python -m icm_lib encode / decode``: an image file on disk to a stream on disk and back, and
one line of error with exit status 2 for every bad file, image or codec."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import deadline
from PIL import Image

from icm_lib import cli
from icm_lib.codec import build_codec
from icm_lib.errors import ImageError
from icm_lib.files import atomic_torch_save
from icm_lib.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small random-weight codec saved as a finished run's codec.pt, another codec, and a
    70 x 90 scene written as a PNG."""
    from icm_lib.dev.common import scene_images

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48).eval()
    codec.update()
    run = root / "run"
    atomic_torch_save(codec.codec_state(), run / "codec.pt")
    torch.manual_seed(1)
    other = build_codec("bmshj2018-hyperprior", N=32, M=48).eval()
    other.update()
    atomic_torch_save(other.codec_state(), root / "other.pt")
    poisoned = codec.codec_state()
    poisoned["state_dict"] = {k: v.clone() for k, v in poisoned["state_dict"].items()}
    poisoned["state_dict"]["g_a.0.weight"].view(-1)[3] = float("nan")
    atomic_torch_save(poisoned, root / "diverged.pt")
    scene = scene_images(1, 96, seed=3)[0][:, :70, :90]
    pixels = (scene * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(root / "scene.png")
    return {"root": root, "codec": codec, "run": run, "image": root / "scene.png"}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, *needles: str) -> None:
    assert code == cli.EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_image_file_to_stream_file_and_back(files, capsys, tmp_path, monkeypatch):
    stream, png = tmp_path / "scene.icm", tmp_path / "scene.png"
    code, out, err = run_cli(
        capsys, "encode", files["image"], "-o", stream, "--codec", files["run"] / "codec.pt"
    )
    assert code == 0, err
    data = stream.read_bytes()
    assert data == files["codec"].compress(files["image"])  # the library's own bytes
    assert f"{len(data)} bytes" in out and "bpp" in out and " s " in out
    bpp = 8 * len(data) / (70 * 90)
    assert f"{bpp:.4f} bpp" in out
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file + rename

    code, out, err = run_cli(capsys, "decode", stream, "-o", png, "--codec", files["run"])
    assert code == 0, err
    codec = files["codec"]
    for claim in (
        "bmshj2018-hyperprior",
        "N=32, M=48",
        "90x70 px (padded 128x128)",
        codec.fingerprint.hex(),
        "latent       2x2",
    ):
        assert claim in out, claim
    assert "wrote" in out and " s" in out
    back = np.asarray(Image.open(png))
    assert Image.open(png).format == "PNG" and back.shape == (70, 90, 3)
    expected = (codec.decompress(data)[0] * 255).round().clamp(0, 255).byte().permute(1, 2, 0)
    assert np.array_equal(back, expected.numpy())

    # --tile: g_s on 1 x 1 latent tiles (a 2 x 2 latent: four tiles), the same picture up to
    # float rounding (a pixel may round to its neighbouring 8-bit value)
    tiled = tmp_path / "tiled.png"
    code, _, err = run_cli(
        capsys, "decode", stream, "-o", tiled, "--codec", files["run"], "--tile", 1
    )
    assert code == 0, err
    diff = np.abs(np.asarray(Image.open(tiled)).astype(int) - back.astype(int))
    assert diff.max() <= 1
    code, _, err = run_cli(
        capsys, "decode", stream, "-o", tiled, "--codec", files["run"], "--tile", 0
    )
    assert code == 2 and "--tile must be positive" in err

    # --channels-last: the transforms in the other layout; the decoder reads the plain stream,
    # and a stream it writes is read by a plain decoder (one format)
    fast_png, fast_stream = tmp_path / "fast.png", tmp_path / "fast.icm"
    code, _, err = run_cli(
        capsys, "decode", stream, "-o", fast_png, "--codec", files["run"], "--channels-last"
    )
    assert code == 0, err
    diff = np.abs(np.asarray(Image.open(fast_png)).astype(int) - back.astype(int))
    assert diff.max() <= 1
    code, _, err = run_cli(
        capsys, "encode", files["image"], "-o", fast_stream, "--codec", files["run"],
        "--channels-last",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(capsys, "decode", fast_stream, "-o", fast_png, "--codec", files["run"])
    assert code == 0, err

    # --bf16: the transforms under bfloat16 autocast; the same format both ways, the picture
    # within the synthesis's bfloat16 rounding; where bfloat16 is only emulated it says, on
    # stderr, that it will be slower (and does it: an explicit request)
    import icm_lib.runtime as runtime

    monkeypatch.setattr(runtime, "bf16_hardware", lambda device=None: "none (emulated)")
    code, _, err = run_cli(
        capsys, "decode", stream, "-o", fast_png, "--codec", files["run"], "--bf16"
    )
    assert code == 0, err
    assert "--bf16 on cpu: bfloat16 hardware none (emulated)" in err and "slower" in err
    diff = np.abs(np.asarray(Image.open(fast_png)).astype(int) - back.astype(int))
    assert diff.mean() < 1 and diff.max() <= 8
    monkeypatch.setattr(runtime, "bf16_hardware", lambda device=None: "avx512_bf16")
    code, _, err = run_cli(
        capsys, "encode", files["image"], "-o", fast_stream, "--codec", files["run"], "--bf16"
    )
    assert code == 0 and "--bf16" not in err, err
    code, _, err = run_cli(capsys, "decode", fast_stream, "-o", fast_png, "--codec", files["run"])
    assert code == 0, err


def test_python_dash_m_icm_lib_encode(files, tmp_path):
    stream = tmp_path / "out.icm"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "icm_lib", "encode", str(files["image"]), "-o", str(stream)]
        + ["--codec", str(files["run"])],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert stream.read_bytes() == files["codec"].compress(files["image"])
    assert "bpp" in proc.stdout


def _cut(files, tmp_path) -> Path:
    data = files["codec"].compress(files["image"])
    path = tmp_path / "cut.icm"
    path.write_bytes(data[: len(data) // 2])
    return path


def _random_bytes(files, tmp_path) -> Path:
    path = tmp_path / "random.icm"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8).tobytes())
    return path


def _foreign(files, tmp_path) -> Path:
    """A valid stream, written by another codec (other weights, same architecture)."""
    from icm_lib.codec import load_codec
    from icm_lib.files import load_checkpoint

    other = load_codec(load_checkpoint(files["root"] / "other.pt"))
    path = tmp_path / "foreign.icm"
    path.write_bytes(other.compress(files["image"]))
    return path


@pytest.mark.parametrize(
    "make, needle",
    [
        (_cut, "checksum"),
        (_random_bytes, "not an icm_lib bitstream"),
        (_foreign, "other weights"),
        (lambda f, p: p / "missing.icm", "no stream file"),
    ],
    ids=["cut", "random-bytes", "other-codec", "missing"],
)
def test_bad_stream_files_give_one_error_line(files, capsys, tmp_path, make, needle):
    stream = make(files, tmp_path)
    code, _, err = run_cli(
        capsys, "decode", stream, "-o", tmp_path / "x.png", "--codec", files["run"]
    )
    assert_one_error_line(code, err, needle)
    assert not (tmp_path / "x.png").exists()


def _text_file(tmp_path) -> Path:
    path = tmp_path / "notes.jpg"
    path.write_text("not an image\n")
    return path


def _nan_tiff(tmp_path) -> Path:
    path = tmp_path / "nan.tif"
    a = np.full((20, 30), 0.5, np.float32)
    a[4, 5] = np.nan
    Image.fromarray(a).save(path)
    return path


def _int32_tiff(tmp_path) -> Path:
    path = tmp_path / "int.tif"
    Image.fromarray(np.full((20, 30), 300_000, np.int32)).save(path)
    return path


@pytest.mark.parametrize(
    "make, needle",
    [
        (_text_file, "cannot read image"),
        (_nan_tiff, "NaN or infinite"),
        (_int32_tiff, "outside 0..65535"),
        (lambda p: p / "missing.png", "no image file"),
    ],
    ids=["not-an-image", "nan-tiff", "int32-tiff", "missing"],
)
def test_bad_images_give_one_error_line_promptly(files, capsys, tmp_path, make, needle):
    out = tmp_path / "x.icm"
    with deadline(120):
        code, _, err = run_cli(capsys, "encode", make(tmp_path), "-o", out, "--codec", files["run"])
    assert_one_error_line(code, err, needle)
    assert not out.exists()


def test_a_diverged_codec_is_refused(files, capsys, tmp_path):
    diverged = files["root"] / "diverged.pt"
    with deadline(120):
        code, _, err = run_cli(
            capsys, "encode", files["image"], "-o", tmp_path / "x.icm", "--codec", diverged
        )
    assert_one_error_line(code, err, "NaN or infinite", "g_a.0.weight")
    stream = tmp_path / "ok.icm"
    stream.write_bytes(files["codec"].compress(files["image"]))
    code, _, err = run_cli(capsys, "decode", stream, "-o", tmp_path / "x.png", "--codec", diverged)
    assert_one_error_line(code, err, "NaN or infinite")


def test_nan_tensor_compress_returns_promptly(files):
    """Before the guards, one NaN looped forever in the entropy coder's escape loop."""
    x = torch.rand(1, 3, 64, 64)
    x[0, 1, 10, 10] = float("nan")
    with deadline(60), pytest.raises(ImageError, match="NaN"):
        files["codec"].compress(x)


def test_codec_and_output_mistakes(files, capsys, tmp_path):
    stream = tmp_path / "ok.icm"
    stream.write_bytes(files["codec"].compress(files["image"]))
    code, out, err = run_cli(capsys, "decode", stream, "-o", tmp_path / "x.png")
    assert_one_error_line(code, err, "--codec")
    assert "bmshj2018-hyperprior" in out  # the header's claims are printed before
    code, _, err = run_cli(capsys, "decode", stream, "-o", tmp_path / "x.png", "--zoo")
    assert_one_error_line(code, err, "explicit N/M")
    code, _, err = run_cli(
        capsys, "decode", stream, "-o", tmp_path / "x.jpg", "--codec", files["run"]
    )
    assert_one_error_line(code, err, "PNG")
    code, _, err = run_cli(
        capsys,
        "decode",
        stream,
        "-o",
        tmp_path / "x.png",
        "--codec",
        files["run"],
        "--max-pixels",
        4096,
    )
    assert_one_error_line(code, err, "max_pixels")
    code, _, err = run_cli(
        capsys, "encode", files["image"], "-o", tmp_path / "y.icm", "--codec", tmp_path
    )
    assert_one_error_line(code, err, "holds no codec.pt")
    code, _, err = run_cli(
        capsys, "encode", files["image"], "-o", tmp_path / "y.icm", "--codec", stream
    )
    assert_one_error_line(code, err)  # a stream is no checkpoint


def test_zoo_offline_says_what_to_do(files, capsys, tmp_path, monkeypatch):
    """Offline, ``--zoo`` ends with the library's own WeightsUnavailableError message."""
    from icm_lib.errors import WeightsUnavailableError

    monkeypatch.setenv("ICM_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    with pytest.raises(WeightsUnavailableError) as info:
        build_codec("bmshj2018-hyperprior", 2, pretrained=True)
    with deadline(60):
        code, _, err = run_cli(
            capsys,
            "encode",
            files["image"],
            "-o",
            tmp_path / "z.icm",
            "--zoo",
            "bmshj2018-hyperprior",
            "--quality",
            2,
        )
    assert_one_error_line(code, err)
    assert err.strip() == "error: " + " ".join(str(info.value).split())
    assert not (tmp_path / "z.icm").exists()
    code, _, err = run_cli(
        capsys,
        "encode",
        files["image"],
        "-o",
        tmp_path / "z.icm",
        "--zoo",
        "bmshj2018-hyperprior",
        "--quality",
        99,
    )
    assert_one_error_line(code, err, "qualities")


def test_usage_mistakes_exit_2():
    with pytest.raises(SystemExit) as info:
        cli.main(["encode", "x.png"])  # no -o, no codec
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["encode", "x.png", "-o", "y", "--codec", "a", "--zoo", "cheng2020-attn"])
    assert info.value.code == 2


@pytest.mark.parametrize("name", sorted(cli.FORWARDED))
def test_other_commands_are_forwarded_to_their_modules(name, monkeypatch):
    import importlib

    module = importlib.import_module(cli.FORWARDED[name][0])
    assert list(inspect.signature(module.main).parameters) == ["argv"]
    calls = []
    monkeypatch.setattr(module, "main", lambda argv: calls.append(argv) or 3)
    assert cli.main([name, "--profile", "smoke"]) == 3
    assert calls == [["--profile", "smoke"]]
    monkeypatch.setattr(module, "main", lambda argv: {"record": 1})  # train, study, gan
    assert cli.main([name]) == 0
    monkeypatch.setattr(module, "main", lambda argv: {})
    assert cli.main([name]) == (1 if name == "train" else 0)  # as `python -m icm_lib.train`


def test_help_says_how_the_decoder_finds_its_codec(capsys):
    with pytest.raises(SystemExit):
        cli.main(["decode", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the same --codec" in text and "--max-pixels" in text


def test_zoo_weights_from_a_local_file_encode_and_decode(files, capsys, tmp_path, monkeypatch):
    """``--zoo-weights``: the zoo model read from a hand-placed file, offline; a stream of those
    weights decodes with them, is refused with other weights, and the flag needs --zoo."""
    from compressai.zoo import image as zoo_image

    monkeypatch.setenv("ICM_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    local, other = tmp_path / "zoo-q1.pth.tar", tmp_path / "other-q1.pth.tar"
    for seed, path in ((0, local), (1, other)):
        torch.manual_seed(seed)
        model = zoo_image.model_architectures["bmshj2018-hyperprior"](128, 192)
        torch.save(model.state_dict(), path)
    stream, png = tmp_path / "z.icm", tmp_path / "z.png"
    args = ["--zoo", "bmshj2018-hyperprior", "--quality", 1, "--zoo-weights", local]
    code, out, err = run_cli(capsys, "encode", files["image"], "-o", stream, *args)
    assert code == 0, err
    assert "bmshj2018-hyperprior q1" in out
    code, out, err = run_cli(capsys, "decode", stream, "-o", png, "--zoo", "--zoo-weights", local)
    assert code == 0 and png.is_file(), err
    code, _, err = run_cli(capsys, "decode", stream, "-o", png, "--zoo", "--zoo-weights", other)
    assert_one_error_line(code, err, "fingerprint")
    code, _, err = run_cli(capsys, "decode", stream, "-o", png, "--zoo-weights", local)
    assert_one_error_line(code, err, "--zoo-weights goes with --zoo")
    code, _, err = run_cli(
        capsys, "encode", files["image"], "-o", stream, "--zoo", "bmshj2018-hyperprior",
        "--zoo-weights", tmp_path / "missing.pth.tar",
    )  # fmt: skip
    assert_one_error_line(code, err, "no file at")


#: per command, settings it refuses before any work, and a word its error line must name
BAD_SETTINGS = {
    "train": (["--profile", "nope", "--task", "seg", "--lmbda", "1"], "unknown profile 'nope'"),
    "train device": (
        ["--profile", "smoke", "--task", "seg", "--lmbda", "1", "--device", "gpu"],
        "unknown device 'gpu'",
    ),
    "study": (["--profile", "nope", "--plan"], "unknown profile 'nope'"),
    "study no-fold": (["--profile", "smoke", "--no-fold-bn"], "--no-fold-bn goes with --bf16"),
    "train no-fold": (
        ["--profile", "smoke", "--task", "seg", "--lmbda", "1", "--no-fold-bn", "--device", "cpu"],
        "--no-fold-bn goes with --bf16",
    ),
    "study s-per-step": (["--profile", "smoke", "--plan", "--s-per-step", "det"], "det=0.26"),
    "gan": (["--profile", "smoke", "--codec", "x.pt", "--preset", "loud"], "preset must be"),
    "gan codec": (["--profile", "smoke", "--codec", "no-such-codec.pt"], "no-such-codec.pt"),
    "gan device": (["--profile", "smoke", "--codec", "x.pt", "--device", "gpu"], "'gpu'"),
    "world-check": (["--profile", "nope"], "unknown profile 'nope'"),
    "pilot": (["--profile", "smoke", "--overrides", "icm__no_such=1"], "no field 'no_such'"),
    "train overrides": (
        ["--profile", "smoke", "--task", "seg", "--lmbda", "1", "--overrides", "icm__no_such=1"],
        "no field 'no_such'",
    ),
    "study overrides": (
        ["--profile", "smoke", "--plan", "--overrides", "icm__amp=maybe"],
        "icm__amp",
    ),
    "bench": (["recognizers", "--profile", "smoke", "--recipe", "det_steps150"], "FIELD=VALUE"),
    "tutorial": (["--profile", "smoke", "--only", "99"], "--only 99"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_every_command_refuses_bad_settings_in_one_error_line(case, capsys, monkeypatch):
    """A command given a setting it does not take (an unknown profile, preset, device or field)
    says so in one ``error: ...`` line with status 2, as encode / decode do, not with a
    traceback, and before it prepares any data."""
    from icm_lib.experiment import Experiment

    argv, needle = BAD_SETTINGS[case]
    monkeypatch.setattr(Experiment, "prepare", lambda *a, **k: pytest.fail("data prepared"))
    code, _, err = run_cli(capsys, case.split()[0], *argv)
    assert_one_error_line(code, err, needle)


@pytest.mark.parametrize("command", ["train", "study"])
def test_train_and_study_take_profile_overrides(command, monkeypatch):
    """``--overrides`` sets profile fields for a run or a study, as the notebooks'
    ``ICM_OVERRIDES`` does (e.g. the codecs for machines in float32 on a GPU that only emulates
    bfloat16); the profile that reaches the data is the overridden one."""
    from icm_lib.experiment import Experiment

    seen = {}

    def prepare(profile, *a, **k):
        seen["icm"] = profile.icm
        raise SystemExit(0)

    monkeypatch.setattr(Experiment, "prepare", prepare)
    args = ["--task", "seg", "--lmbda", "1"] if command == "train" else ["--tasks", "seg"]
    with pytest.raises(SystemExit):
        cli.main([command, "--profile", "smoke", "--device", "cpu", *args,
                  "--overrides", "icm__amp=False icm__seg_lambdas=[2.0]"])  # fmt: skip
    assert seen["icm"].amp is False and seen["icm"].seg_lambdas == (2.0,)


def test_report_into_a_missing_readme_is_one_error_line(capsys, tmp_path):
    readme = tmp_path / "README.md"
    code, _, err = run_cli(capsys, "report", "--results-dir", tmp_path, "--readme", readme)
    assert_one_error_line(code, err, str(readme))


@pytest.mark.parametrize(
    "argv,said",
    [
        ("train --task seg --lmbda 1 --accumulate 0", "--accumulate: must be at least 1, got 0"),
        ("train --task seg --lmbda 1 --seed -1", "--seed: must be at least 0, got -1"),
        ("gan --seed -2", "--seed: must be at least 0, got -2"),
        ("study --seeds 0 -1", "--seeds: must be at least 0, got -1"),
        ("study --seeds 0 x", "--seeds: invalid int value: 'x'"),
    ],
)
def test_a_bad_count_or_seed_is_refused_by_the_parser(capsys, argv, said):
    """Before any data is made: a negative seed used to fail deep in the crop sampler."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv.split())
    assert info.value.code == 2
    assert said in capsys.readouterr().err


def test_a_study_whose_runs_failed_prints_its_report_and_exits_1(capsys):
    from icm_lib.errors import LaunchError

    def failed(argv):
        error = LaunchError("1 run(s) of rd did not finish:\n  seg-run: failed\n    log: x.log")
        error.report = object()
        raise error

    assert cli.command_status(failed) == cli.EXIT_RUNS_FAILED == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: 1 run(s) of rd did not finish:",
        "  seg-run: failed",
        "    log: x.log",
    ]


def test_a_command_called_from_python_raises_the_error_the_shell_sees_as_a_line():
    from icm_lib import study
    from icm_lib.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown profile") as info:
        study.main(["--profile", "nope", "--plan"])
    assert isinstance(info.value, ValueError)  # a bad argument, as callers caught it before


@pytest.mark.parametrize("fault", [KeyError, ValueError, FileNotFoundError])
def test_a_fault_of_the_library_keeps_its_traceback(fault):
    """Only the library's own refusals become a line: a bare ValueError or OSError from deep in a
    study is a fault whose traceback is needed."""

    def broken(argv):
        raise fault("a bug, not bad input")

    with pytest.raises(fault):
        cli.command_status(broken)


def test_a_module_run_from_the_shell_ends_bad_settings_in_one_line():
    """``python -m icm_lib.study`` (the module's own entry, not the forwarding one)."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "icm_lib.study", "--profile", "nope", "--plan"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=110,
    )
    assert done.returncode == cli.EXIT_BAD_INPUT, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: unknown profile 'nope'; choose one of " + str(sorted(PROFILES))]


def test_every_module_entry_point_goes_through_the_error_boundary():
    """Each ``python -m icm_lib.X`` module ends its ``__main__`` block in ``raise
    SystemExit(command_status(main ...))``: a new command that forgets it would print
    tracebacks for bad input (or, without the SystemExit, exit 0 after an error)."""
    import ast

    for path in sorted((ROOT / "icm_lib").rglob("*.py")):
        if path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text())
        blocks = [
            node
            for node in tree.body
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        ]
        for block in blocks:
            assert "raise SystemExit(command_status(main" in ast.unparse(block), path
