"""Real coding across devices (marked `gpu`: skipped without CUDA). The notebooks and the
`paper` training step also run on CUDA: see the `cuda` parameters of test_notebooks.py and
test_paper_profile.py."""

import copy

import pytest
import torch

from icm_lib.codec import load_codec

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def images(trained_family_codecs):
    from icm_lib.dev.common import scene_images

    return list(scene_images(4, 192, seed=7)) + [
        torch.rand(3, 96, 160),
        trained_family_codecs[1][0],
    ]


@pytest.mark.parametrize("family", ["scale", "mean-scale", "autoregressive"])
def test_streams_cross_devices(trained_family_codecs, images, family):
    """A stream written on either device decodes on either to the writer's ŷ, and to pixels
    within one 8-bit level of each other."""
    state = trained_family_codecs[0][family].codec_state()
    cpu = load_codec(state).eval()
    gpu = load_codec(state).cuda().eval()
    tf32 = copy.deepcopy(gpu)
    assert gpu.fingerprint == cpu.fingerprint
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for x in images:
            for writer in (cpu, gpu):
                data, latent = writer.compress_with_latent(x)
                pixels = []
                for reader in (cpu, gpu, tf32):
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = (
                        reader is tf32
                    )
                    assert torch.equal(reader.decoded_latent(data).cpu(), latent.cpu())
                    pixels.append(reader.decompress(data).cpu())
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
                for p in pixels[1:]:
                    assert (p - pixels[0]).abs().max() <= 1 / 255
    finally:  # the process's flags for the tests after this one
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_tables_built_on_the_gpu_equal_the_cpus(trained_family_codecs):
    """update() of a CUDA codec computes its tables on the CPU: same tables, same fingerprint."""
    for codec in trained_family_codecs[0].values():
        gpu = load_codec(codec.codec_state()).cuda()
        gpu.update()
        assert gpu.fingerprint == codec.fingerprint


@pytest.mark.parametrize("task", ["det", "seg"])
def test_batch_norms_fold_on_cuda_with_tf32_on(smoke_env, task):
    """``--bf16`` on CUDA folds the recognizer's batch norms (``icm.fold_bn``): cuDNN's default
    TF32 would round the folded and the unfolded weights apart by more than the fold's checks
    allow (~2.5e-4), so the checks run in exact float32 and the flags are given back."""
    machine = copy.deepcopy(smoke_env.machine(task))
    machine.__dict__.pop("_folded_twin", None)  # a twin an earlier test made: fold anew here
    machine.to("cuda")
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        twin = machine.folded()
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    assert twin is not machine and next(twin.model.parameters()).is_cuda


def test_checkerboard_score_on_cuda():
    from icm_lib.metrics import checkerboard_score

    x = torch.rand(2, 3, 64, 64)
    y = x + 0.05 * torch.randn_like(x)
    assert checkerboard_score(y.cuda(), x.cuda()) == pytest.approx(
        checkerboard_score(y, x), abs=1e-6
    )


def test_paper_step_peaks_count_each_setting_as_if_alone():
    """``bench paper-step`` builds a task/variant's settings side by side; a setting's peak is
    not inflated by what the ones built before it hold (two identical settings: equal peaks)."""
    import functools

    from icm_lib.dev.stepbench import build_machine, build_step, recognition_config, time_settings
    from icm_lib.profiles import get_profile

    device, smoke = torch.device("cuda"), get_profile("smoke")
    # cuBLAS's workspace, made by a process's first matrix product and then kept, is no
    # setting's: made here, whichever test ran before this one
    torch.ones(64, 64, device=device) @ torch.ones(64, 64, device=device)
    machine = build_machine("seg", recognition_config(smoke, "torchvision/smp"), device)
    build = functools.partial(
        build_step, "seg", "aux-enc", machine, smoke, device, batch=2, crop=64, fast=False
    )
    _, rows = time_settings([build, build], 1, device)
    first, second = (r["peak_mib"] for r in rows)
    assert first > 0 and second == pytest.approx(first, rel=0.15)
