"""`python -m resnet_fast.train ARGS` (and `torchrun ... -m resnet_fast.train ARGS`) = `resnet-fast train ARGS`."""

import sys

from .cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(argv if argv[:1] in (["train"], ["experiment"]) else ["train", *argv]))
