import os

import pytest
import torch

os.environ.setdefault("ICM_OFFLINE", "1")  # no test may wait on the network
torch.set_num_threads(min(2, os.cpu_count() or 1))

#: the device parameter of tests that run on the CPU and, marked `gpu`, on CUDA
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs CUDA (a `gpu` test); run on a GPU machine with -m gpu, see README 'Tests'"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """A tiny embedded dataset shared by the tests."""
    from icm_lib.data.embedded import prepare_embedded

    return prepare_embedded(
        tmp_path_factory.mktemp("data"), image_size=128, n_train=12, n_val=6, seed=0
    )


@pytest.fixture(scope="session")
def trained_codec(scenes):
    """A small hyperprior codec trained for MSE on scene crops (~15 s), entropy tables updated.

    Real coding needs trained entropy models: with random weights the likelihood estimate and
    the real bytes are not comparable.
    """
    from icm_lib.codec import build_codec
    from icm_lib.data.coco import CocoDetection
    from icm_lib.dev.common import train_briefly

    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48)
    images = torch.stack([CocoDetection(scenes.coco_root, "train")[i][0] for i in range(12)])
    return train_briefly(codec, images, steps=600), images


@pytest.fixture(scope="session")
def smoke_env(tmp_path_factory):
    """The smoke profile's :class:`~icm_lib.experiment.Experiment`, prepared once: data, both
    frozen machines, the reference codec (``exp.cache_dir.parent`` is its data folder)."""
    from icm_lib.experiment import Experiment
    from icm_lib.profiles import get_profile

    data_dir = tmp_path_factory.mktemp("smoke") / "data"
    return Experiment.prepare(get_profile("smoke"), data_dir, torch.device("cpu"), progress=False)


@pytest.fixture(scope="session")
def trained_family_codecs():
    """A scale, a mean-scale and an autoregressive codec (N=32, M=48), briefly trained on
    procedural scenes (~20 s together), and two 128 px test scenes."""
    from icm_lib.codec import build_codec
    from icm_lib.dev.common import FAMILY_CODECS, scene_images, train_briefly

    images = scene_images(8, 128, seed=0)
    codecs = {}
    for family, name in FAMILY_CODECS:
        torch.manual_seed(0)
        codecs[family] = train_briefly(build_codec(name, N=32, M=48), images, steps=150)
    return codecs, scene_images(2, 128, seed=1)


# ------------------------------------------------------------- the notebooks, executed once
# shared by the notebook tests (tests/test_notebooks.py) and the book's (tests/test_book.py): the
# six notebooks on smoke in one data folder, as ``make tutorial`` runs them


@pytest.fixture(scope="session", params=DEVICES)
def root(request, tmp_path_factory):
    """One data folder for all notebooks, as in ``make tutorial``: later ones reuse the caches.
    The notebooks run on the CPU and (tests marked `gpu`) on CUDA."""
    return tmp_path_factory.mktemp(f"nb-{request.param}"), request.param


def _run(root, number):
    from icm_lib.tutorial import notebook_paths, run_notebook

    folder, device = root
    path = notebook_paths([number])[0]
    metrics = run_notebook(
        path, "smoke", folder / "outputs", folder / "data", extra={"DEVICE": device}
    )
    assert metrics["device"].startswith(device)
    return metrics, folder / "outputs" / "smoke" / path.stem


@pytest.fixture(scope="session")
def nb00(root):
    return _run(root, "00")


@pytest.fixture(scope="session")
def nb01(root, nb00):
    return _run(root, "01")


@pytest.fixture(scope="session")
def nb02(root, nb01):
    return _run(root, "02")


@pytest.fixture(scope="session")
def nb03(root, nb00):
    return _run(root, "03")


@pytest.fixture(scope="session")
def nb04(root, nb01):
    return _run(root, "04")


@pytest.fixture(scope="session")
def nb05(root, nb02, nb04):
    from icm_lib.tutorial import notebook_paths, run_notebook

    folder, device = root
    path = notebook_paths(["05"])[0]
    metrics = run_notebook(
        path,
        "smoke",
        folder / "outputs",
        folder / "data",
        extra={"DEVICE": device, "RESULTS_DIR": str(folder / "no-results")},
    )
    return metrics, folder / "outputs" / "smoke" / path.stem
