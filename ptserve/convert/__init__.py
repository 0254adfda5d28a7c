"""``ptserve convert``: turn a trusted fastai export into a pickle-free folder ptserve serves.

The folder (``manifest.py``) holds the model as a ``torch.export`` program and the Learner's
preprocessing and decoding as plain data. ``command.py`` is the command: it runs the fastai
loading in a confined child process (``child.py``, ``sandbox.py``), then verifies what the child
wrote (``check.py``). ``folder.py`` serves a folder with built-in hooks written in numpy and
Pillow (``tabular.py``, ``vision.py``, ``decoding.py``): no fastai, no unpickling.

This package imports nothing heavy: the child process starts here, before it is confined.
"""


class ConversionError(Exception):
    """A conversion that cannot be done or did not check out; the message is one line."""
