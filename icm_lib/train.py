"""Train one codec from the shell: ``python -m icm_lib.train`` (the loop: :mod:`icm_lib.trainer`).

    python -m icm_lib.train --profile cpu --task det --variant aux-enc --lmbda 0.8 --seed 0
    torchrun --nproc_per_node 4 -m icm_lib.train --profile paper --task det --variant aux-enc --lmbda 0.8

The run is the same one the notebooks and the study train for these settings (load-or-compute,
resumable: :meth:`icm_lib.experiment.Experiment.icm_run`); a JSON summary is printed. Under
``torchrun --nproc_per_node K`` the batch is split over K processes.
"""

from __future__ import annotations

import argparse
import json

from .aux_branch import VARIANTS
from .cli import at_least
from .experiment import Experiment
from .profiles import (
    BF16_HELP,
    NO_FOLD_HELP,
    OVERRIDES_HELP,
    from_precision_flags,
    get_profile,
    parse_overrides,
)
from .runtime import Distributed, get_device
from .tasks import TASKS


def main(argv: list[str] | None = None) -> dict:
    """``python -m icm_lib.train --task det --variant aux-enc --lmbda 0.8`` (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m icm_lib.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", default="cpu", help="smoke | cpu | paper")
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--variant", choices=VARIANTS, default="aux-enc")
    parser.add_argument("--lmbda", type=float, required=True, help="λ of Eq. 4-6 (MSE λ for mse)")
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the profile's steps")
    parser.add_argument(
        "--accumulate", type=at_least(1), default=1, help="micro-batches per step (>= 1)"
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="", help="default: cuda if available, else cpu")
    parser.add_argument(
        "--stop-after", type=int, default=None, help="stop at this step (resumable)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--bf16", action="store_true", help=BF16_HELP)
    parser.add_argument("--no-fold-bn", action="store_true", help=NO_FOLD_HELP)
    parser.add_argument("--overrides", default="", help=OVERRIDES_HELP)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile, **parse_overrides(args.overrides))
    dist = Distributed(get_device(args.device) if args.device else None)
    bf16 = args.bf16 and args.variant != "mse"  # an MSE run never autocasts: the same run
    no_fold = args.no_fold_bn and (bf16 or not args.bf16)  # (with --bf16, an MSE run ignores it)
    try:  # (inside: a refused flag still closes a torchrun job's process group)
        profile = from_precision_flags(profile, bf16, no_fold, dist.device, say=dist.is_main)
        exp = Experiment.prepare(profile, args.data_dir, dist.device, not args.no_progress, dist)
        _, log, run_dir = exp.icm_run(
            args.task,
            args.variant,
            args.lmbda,
            args.seed,
            steps=args.steps,
            accumulate=args.accumulate,
            stop_after=args.stop_after,
        )
        summary = {
            "run_dir": str(run_dir),
            "steps_logged": len(log),
            "last": log[-1] if log else None,
            "world_size": dist.world_size,
            "finished": (run_dir / "codec.pt").is_file(),
        }
        if dist.is_main:
            print(json.dumps(summary, indent=2))
        return summary
    finally:
        dist.close()


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main, None, empty_fails=True))
