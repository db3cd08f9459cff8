"""PyTorch's own module test inputs through fastgan's modules: the ModuleInfo entries of
torch.testing._internal.common_modules.module_db for nn.BatchNorm1d/2d/3d,
nn.InstanceNorm1d/2d/3d, nn.Conv2d and nn.ConvTranspose2d, and the Conv2d and ConvTranspose2d
tests of common_nn (geometries, groups, string padding, padding modes). Each case builds torch's
module and fastgan's from the same constructor arguments (the norms with negative_slope=1 are
the plain ones; the convolutions have no activation), gives fastgan's module torch's
parameters, and checks that the forward inputs give the same outputs, first- and second-order
gradients (input and parameters) and buffers, in train and eval mode."""
import functools
import warnings

import pytest
import torch
from torch import nn

import fastgan
from conftest import TOLERANCES, first_and_second_order_grads
from fastgan.nn import registry

# Importing torch's test utilities freezes torch.backends' flags for the whole process
# (disable_global_flags): this context puts them back as they were, for the rest of the suite.
with torch.backends.__allow_nonbracketed_mutation(), warnings.catch_warnings():
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated")
    common_modules = pytest.importorskip("torch.testing._internal.common_modules")
    common_nn = pytest.importorskip("torch.testing._internal.common_nn")

FASTGAN_MODULES = {
    nn.BatchNorm1d: functools.partial(fastgan.nn.BatchNormLeakyReLU1d, negative_slope=1.0),
    nn.BatchNorm2d: functools.partial(fastgan.nn.BatchNormLeakyReLU2d, negative_slope=1.0),
    nn.BatchNorm3d: functools.partial(fastgan.nn.BatchNormLeakyReLU3d, negative_slope=1.0),
    nn.InstanceNorm1d: functools.partial(fastgan.nn.InstanceNormLeakyReLU1d, negative_slope=1.0),
    nn.InstanceNorm2d: functools.partial(fastgan.nn.InstanceNormLeakyReLU2d, negative_slope=1.0),
    nn.InstanceNorm3d: functools.partial(fastgan.nn.InstanceNormLeakyReLU3d, negative_slope=1.0),
    nn.Conv2d: fastgan.nn.Conv2d,
    nn.ConvTranspose2d: functools.partial(fastgan.nn.ConvTranspose2d, activation=None),
}

# What fastgan cannot take by design, (torch class, dtypes): reason. A skipped case still
# checks that fastgan's module refuses the input with a clear error.
BY_DESIGN = {
    (nn.ConvTranspose2d, (torch.complex32, torch.complex64, torch.complex128)):
        "fastgan's transposed-convolution kernels are real-valued",
}


def _by_design(torch_cls, dtype):
    return next((reason for (cls, dtypes), reason in BY_DESIGN.items()
                 if cls is torch_cls and dtype in dtypes), None)


def _case(torch_cls, make_torch, make_fastgan, inputs, dtype, training, id):
    mode = "train" if training else "eval"
    return pytest.param(torch_cls, make_torch, make_fastgan, inputs, dtype, training,
                        id=f"{id}-{str(dtype).removeprefix('torch.')}-{mode}")


def _module_db_cases():
    torch.manual_seed(0)
    for info in common_modules.module_db:
        if info.module_cls not in FASTGAN_MODULES:
            continue
        for dtype in info.supported_dtypes("cpu"):
            for training in (True, False):
                for module_input in info.module_inputs_func(info, device="cpu", dtype=dtype,
                                                            requires_grad=True,
                                                            training=training):
                    arguments = module_input.constructor_input
                    forward = module_input.forward_input
                    assert not forward.kwargs, "forward keyword arguments are not passed on"
                    yield _case(info.module_cls,
                                functools.partial(info.module_cls, *arguments.args,
                                                  **arguments.kwargs),
                                functools.partial(FASTGAN_MODULES[info.module_cls],
                                                  *arguments.args, **arguments.kwargs),
                                forward.args, dtype, training,
                                f"module_db-{info.name}-{module_input.desc or 'default'}")


def _from_options(torch_module):
    """fastgan's module with the options read from torch's (for common_nn's tests that build
    their module in a function)."""
    entry = next(e for e in registry.FUSED_LAYERS if e.torch_layer is type(torch_module))
    return FASTGAN_MODULES[type(torch_module)](**entry.options(torch_module))


def _common_nn_cases():
    for test in (*common_nn.module_tests, *common_nn.get_new_module_tests()):
        name = test.get("module_name") or test.get("fullname", "").split("_")[0]
        torch_cls = getattr(nn, name, None)
        if torch_cls not in (nn.Conv2d, nn.ConvTranspose2d):
            continue
        if "constructor" in test:
            make_torch = test["constructor"]
            make_fastgan = lambda make_torch=make_torch: _from_options(make_torch())
        else:
            arguments = test.get("constructor_args", ())
            make_torch = functools.partial(torch_cls, *arguments)
            make_fastgan = functools.partial(FASTGAN_MODULES[torch_cls], *arguments)
        id = f"common_nn-{test.get('fullname') or name}-{test.get('desc', 'default')}"
        generator = torch.Generator().manual_seed(0)
        for dtype in (torch.float64, torch.float32):
            x = torch.randn(test["input_size"], generator=generator, dtype=dtype)
            for training in (True, False):
                yield _case(torch_cls, make_torch, make_fastgan, (x,), dtype, training, id)


with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "ComplexHalf support is experimental")
    CASES = [*_module_db_cases(), *_common_nn_cases()]


def _assert_same(actual, expected, name):
    if not expected.is_floating_point():
        assert torch.equal(actual, expected), name
        return
    rtol, atol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=name)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
@pytest.mark.parametrize("torch_cls, make_torch, make_fastgan, inputs, dtype, training", CASES)
def test_pytorch_module_inputs(torch_cls, make_torch, make_fastgan, inputs, dtype, training):
    torch.manual_seed(0)
    reference = make_torch().to(dtype).train(training)
    module = make_fastgan().to(dtype).train(training)
    assert type(reference) is torch_cls
    module.load_state_dict(reference.state_dict())
    reason = _by_design(torch_cls, dtype)
    if reason is not None:
        with pytest.raises(TypeError, match="input must be a floating-point tensor"):
            module(*inputs)
        pytest.skip(reason)
    results = []
    for model in (reference, module):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = model(*leaves)
        wrt = [*leaves, *model.parameters()]
        if out.numel():
            grads = first_and_second_order_grads(out, wrt, seed=1)
        else:  # torch's BatchNorm gives an empty batch's gradients no graph: first order only
            grads = torch.autograd.grad(out.sum(), wrt)
        results.append({"output": out, **{f"gradient {i}": g for i, g in enumerate(grads)},
                        **dict(model.named_buffers())})
    expected, actual = results
    assert actual.keys() == expected.keys()
    for name in expected:
        _assert_same(actual[name], expected[name], name)


def _error_cases():
    for info in common_modules.module_db:
        if info.module_cls not in FASTGAN_MODULES or info.module_error_inputs_func is None:
            continue
        for error_input in info.module_error_inputs_func(info, device="cpu",
                                                         dtype=torch.float32,
                                                         requires_grad=False, training=True):
            arguments = error_input.module_error_input.constructor_input
            yield pytest.param(
                functools.partial(FASTGAN_MODULES[info.module_cls], *arguments.args,
                                  **arguments.kwargs), error_input,
                id=f"{info.name}-{arguments.args}-{arguments.kwargs}")


@pytest.mark.parametrize("make_fastgan, error_input", _error_cases())
def test_pytorch_module_error_inputs(make_fastgan, error_input):
    """The bad arguments torch's module tests refuse, refused with torch's error."""
    forward = error_input.module_error_input.forward_input
    raises = pytest.raises(error_input.error_type, match=error_input.error_regex)
    if error_input.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
        with raises:
            make_fastgan()
    else:
        module = make_fastgan()
        with raises:
            module(*forward.args, **forward.kwargs)
