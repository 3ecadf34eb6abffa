import os

import pytest
import torch

os.environ.setdefault("ICM_OFFLINE", "1")  # no test may wait on the network
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """A tiny embedded dataset shared by the tests."""
    from icm_lib.data.embedded import prepare_embedded

    return prepare_embedded(tmp_path_factory.mktemp("data"), image_size=128, n_train=12,
                            n_val=6, seed=0)


@pytest.fixture(scope="session")
def trained_codec(scenes):
    """A small hyperprior codec trained for MSE on scene crops (~15 s), entropy tables updated.

    Real coding needs trained entropy models: with random weights the likelihood estimate and
    the real bytes are not comparable.
    """
    from compressai.losses import RateDistortionLoss

    from icm_lib.codec import build_codec
    from icm_lib.data.coco import CocoDetection

    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48)
    images = torch.stack([CocoDetection(scenes.coco_root, "train")[i][0] for i in range(12)])
    crit = RateDistortionLoss(lmbda=0.05)
    opt = torch.optim.Adam(codec.main_parameters(), lr=1e-3)
    qopt = torch.optim.Adam(codec.quantile_parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    codec.train()
    for step in range(600):
        idx = torch.randint(0, len(images), (4,), generator=g)
        top, left = torch.randint(0, 65, (2,), generator=g).tolist()
        x = images[idx, :, top:top + 64, left:left + 64]
        out = codec(x)
        loss = crit(out, x)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.main_parameters(), 1.0)
        opt.step()
        qloss = codec.quantile_loss()
        qopt.zero_grad()
        qloss.backward()
        qopt.step()
    codec.eval()
    codec.update(force=True)
    return codec, images


@pytest.fixture(scope="session")
def smoke_env(tmp_path_factory):
    """The smoke profile prepared once: data, both frozen machines, the reference codec."""
    from icm_lib.profiles import get_profile
    from icm_lib.train import prepare

    profile = get_profile("smoke")
    data_dir = tmp_path_factory.mktemp("smoke") / "data"
    datasets, machines, reference, cache_dir = prepare(profile, data_dir, torch.device("cpu"),
                                                       progress=False)
    return profile, data_dir, datasets, machines, reference, cache_dir
