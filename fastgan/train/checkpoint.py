"""Atomic checkpoint files: a crash mid-write never leaves a truncated checkpoint behind."""
import os
import tempfile

import torch


def atomic_save(obj, path):
    """torch.save to a temporary file in the target's directory, fsync, then os.replace: the
    path holds either the previous file or the complete new one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
