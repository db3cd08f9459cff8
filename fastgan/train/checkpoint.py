"""Checkpoint files that survive crashes and refuse code: atomic writes (a crash, a kill or a full
disk mid-write never leaves a truncated checkpoint behind) and safe loading (tensors and plain
Python values only, with an error naming the file when it is corrupt)."""
import errno
import os
import pickle
import tempfile
import zipfile

import torch


def _fsync_directory(directory):
    """Makes a rename in `directory` durable (POSIX); a no-op where directories cannot be
    opened (Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as error:  # some filesystems refuse fsync on directories
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(descriptor)


def check_path(name, path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def atomic_save(obj, path):
    """torch.save to a temporary file in the target's directory, fsync, os.replace, then fsync the
    directory: the path holds either the previous file or the complete new one. On failure (a
    full disk, say) the temporary file is removed and an OSError names the path."""
    path = check_path("path", path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-",
                                             dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        os.unlink(temporary)
        if isinstance(error, OSError) and error.errno is not None:
            raise OSError(error.errno, f"could not write {path} ({error.strerror}); the "
                                       "previous file there is unchanged") from error
        raise
    _fsync_directory(directory)


def safe_load(path):
    """torch.load(path, weights_only=True) onto the CPU, with errors that name the file: a
    truncated or corrupt file, or one holding Python objects other than tensors and plain values
    (which could run code when unpickled), raises ValueError."""
    path = check_path("path", path)
    if not os.path.isfile(path):
        raise ValueError(f"path {path!r} is not a checkpoint file")
    # torch.save writes zip archives; a truncated one loses its central directory at the end.
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path!r} is truncated or corrupt (not a complete "
                         "torch.save archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"refusing to load {path!r}: it holds Python objects other than tensors "
                         "and plain values, which could run code when unpickled (fastgan only "
                         "loads with weights_only=True)") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise ValueError(f"checkpoint {path!r} is truncated or corrupt: {error}") from error
