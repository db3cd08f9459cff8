"""Argument validation for the whole package: each check raises TypeError or ValueError with a
message that names the bad argument, and the int checks return the value as an int."""
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


def check_device(name, value, input):
    """`value` must be on `input`'s device."""
    if value.device != input.device:
        raise ValueError(f"{name} is on {value.device} but input is on {input.device}")


def check_channel_vector(name, value, channels, like):
    """An optional per-channel tensor of shape (C,) on `like`'s device."""
    if value is None:
        return
    check_tensor(name, value, dims=(1,))
    if value.shape[0] != channels:
        raise ValueError(f"{name} must have shape ({channels},) to match the input's {channels} "
                         f"channels, got {tuple(value.shape)}")
    check_device(name, value, like)


def check_normalization_operands(input, running_mean, running_var, weight, bias):
    """The per-channel tensors of a batch or instance normalization of `input` (N, C, ...):
    each optional, of shape (C,) on input's device, the running statistics given together."""
    channels = input.shape[1]
    for name, value in (("running_mean", running_mean), ("running_var", running_var),
                        ("weight", weight), ("bias", bias)):
        check_channel_vector(name, value, channels, input)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")


def check_number(name, value, *, positive=False, minimum=None, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")


def check_int(name, value, minimum=None, choices=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value}")
    return int(value)


def check_int_pair(name, value, minimum):
    """An int or a pair of ints, each >= minimum, as a list of two ints."""
    values = list(value) if isinstance(value, (tuple, list)) else [value, value]
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    try:
        return [check_int(name, v, minimum) for v in values]
    except (TypeError, ValueError) as error:
        raise type(error)(f"{error} (in {name}={value!r})") from None


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value
