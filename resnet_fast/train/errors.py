"""The one exception the training command turns into a message and a non-zero exit."""


class InputError(ValueError):
    """Bad user input (arguments, data folder, checkpoint): reported as `resnet-fast: error: <message>`,
    exit status 2, before anything on disk is written or overwritten."""
