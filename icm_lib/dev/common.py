"""What the developer tools share: the coded families' representatives, procedural scenes as
a tensor, and a codec trained briefly in memory (for the fuzzer, the benchmarks and the tests;
not a codec to use)."""

from __future__ import annotations

import torch

#: the family representatives: (label, CompressAI name)
FAMILY_CODECS = (
    ("scale", "bmshj2018-hyperprior"),
    ("mean-scale", "mbt2018-mean"),
    ("autoregressive", "cheng2020-attn"),
)


def scene_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` procedural scenes (the embedded default's generator) as (n, 3, size, size) in [0, 1]."""
    import numpy as np

    from ..data.scenes import generate_scene

    rng = np.random.default_rng(seed)
    return torch.stack(
        [
            torch.from_numpy(generate_scene(size, rng)[0]).permute(2, 0, 1).float() / 255
            for _ in range(n)
        ]
    )


def train_briefly(
    codec,
    images: torch.Tensor,
    steps: int,
    lmbda: float = 0.05,
    crop: int = 64,
    batch: int = 4,
    seed: int = 0,
):
    """Train a codec for MSE on random crops of ``images`` (in memory, a few seconds per 100
    steps for small models), then build its entropy tables. Enough to give the entropy models
    realistic, peaked distributions for tests; not a codec to use."""
    from compressai.losses import RateDistortionLoss

    torch.manual_seed(seed)
    crit = RateDistortionLoss(lmbda=lmbda)
    opt = torch.optim.Adam(codec.main_parameters(), lr=1e-3)
    qopt = torch.optim.Adam(codec.quantile_parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    span = images.shape[-1] - crop + 1
    codec.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        top, left = torch.randint(0, span, (2,), generator=g).tolist()
        x = images[idx, :, top : top + crop, left : left + crop]
        loss = crit(codec(x), x)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.main_parameters(), 1.0)
        opt.step()
        qloss = codec.quantile_loss()
        qopt.zero_grad()
        qloss.backward()
        qopt.step()
    codec.eval()
    codec.update()
    return codec
