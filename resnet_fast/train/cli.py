"""`resnet-fast` command line: `train` and `experiment degradation`.

    resnet-fast train --arch resnet50 --data imagefolder /data/imagenet --epochs 90 --amp bf16 --channels-last
    torchrun --nproc_per_node=8 -m resnet_fast.train --arch resnet50 --data imagefolder /data/imagenet --sync-bn
    resnet-fast experiment degradation --data cifar10 ~/data/cifar10 --plot

`python -m resnet_fast.train ARGS` is `resnet-fast train ARGS`. Exit status: 0 on success, 2 for bad
input (a message on stderr, nothing written), 1 when training diverges.
"""

import argparse
import sys
from typing import List, Optional

from .errors import InputError
from .options import add_recipe_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-fast", description="Train resnet_fast / torchvision ResNets.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one model", description="Train one model (torchrun for several GPUs).")
    t.add_argument("--arch", required=True, help="any resnet_fast builder: resnet18 ... wide_resnet101_2, "
                   "resnet20 ... resnet110, plain20 ... plain110")
    t.add_argument("--output", default=None, help="run folder (default runs/ARCH)")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue OUTPUT/checkpoint.pt, or the given checkpoint file or run folder")
    add_recipe_options(t)
    e = sub.add_parser("experiment", help="reproduce a figure of the paper")
    esub = e.add_subparsers(dest="experiment", required=True)
    from .experiment import add_degradation_options
    add_degradation_options(esub.add_parser(
        "degradation", help="plain vs residual nets of two depths (He et al. 2015, Fig. 6 left)",
        description="Trains plain-D and resnet-D for each --depths D with one recipe and plots training "
                    "(dashed) and test (bold) error against iterations."))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    try:
        if args.command == "train":
            from .run import train
            train(args)
        else:
            from .experiment import run_degradation
            run_degradation(args)
    except InputError as e:
        print(f"resnet-fast: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"resnet-fast: error: {e}", file=sys.stderr)
        return 1
    return 0
