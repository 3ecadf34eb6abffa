import math

import pytest
import torch

from icm_lib.losses import icm_loss


def _out():
    return {
        "x_hat": torch.full((1, 3, 4, 4), 0.5),
        "likelihoods": {"y": torch.full((1, 2, 2, 2), 0.5), "z": torch.ones(1, 1, 1, 1)},
    }


def test_eq4_eq5_eq6_compose_as_written():
    x = torch.zeros(1, 3, 4, 4)
    task, branch = torch.tensor(2.0), torch.tensor(4.0)
    bpp = 8 / 16  # 8 latents at 1 bit each over 16 pixels
    eq4 = icm_loss(_out(), x, task, lmbda=0.4)
    assert float(eq4["loss"]) == pytest.approx(bpp + 0.4 * 2.0)
    assert float(eq4["branch_loss"]) == 0.0
    eq5 = icm_loss(_out(), x, task, lmbda=0.4, branch_loss=branch, alpha=0.5)
    assert float(eq5["loss"]) == pytest.approx(bpp + 0.4 * (2.0 + 0.5 * 4.0))
    eq6 = icm_loss(_out(), x, task, lmbda=2.0, branch_loss=branch, alpha=0.5, mse_weight=1.0)
    assert float(eq6["mse_loss"]) == pytest.approx(0.25)
    assert float(eq6["loss"]) == pytest.approx(bpp + 2.0 * (2.0 + 2.0 + 0.25))
    assert set(eq6) == {"loss", "bpp_loss", "task_loss", "branch_loss", "mse_loss", "main_loss"}
    # the main loss of section 4.2: the same without the branch term
    assert float(eq6["main_loss"]) == pytest.approx(bpp + 2.0 * (2.0 + 0.25))
    assert float(eq4["main_loss"]) == pytest.approx(float(eq4["loss"]))
    assert all(math.isfinite(float(v)) for v in eq6.values())
