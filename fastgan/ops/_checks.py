"""Argument validation shared by the functional ops: errors name the bad argument."""
import numbers

import torch


def check_tensor(name, value, *, dims=None, min_dim=None, floating=True):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if dims is not None and value.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, "
                         f"got shape {tuple(value.shape)}")
    if min_dim is not None and value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape "
                         f"{tuple(value.shape)}")


def check_channel_vector(name, value, channels, like):
    """An optional per-channel tensor of shape (C,) on `like`'s device."""
    if value is None:
        return
    check_tensor(name, value, dims=(1,))
    if value.shape[0] != channels:
        raise ValueError(f"{name} must have shape ({channels},) to match the input's {channels} "
                         f"channels, got {tuple(value.shape)}")
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but input is on {like.device}")


def check_number(name, value, *, positive=False, minimum=None, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
