"""resnet_fast.train: the `resnet-fast` training command (also `python -m resnet_fast.train`, torchrun).

    cli.py         argument parsing, exit codes            run.py         one training run, end to end
    data.py        synthetic / CIFAR-10 / ImageFolder      models.py      --arch / --backend
    engine.py      epoch, evaluation, LR schedule          checkpoint.py  save / resume (RNG states too)
    distributed.py torchrun, DDP helpers                   records.py     metrics.csv, curves.png
    progress.py    progress bar                            experiment.py He et al. Fig. 6 (degradation)
    options.py     the options train and experiment share
"""

from .cli import main

__all__ = ["main"]
