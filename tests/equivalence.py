"""Whether two models compute the same: how the tests check that fastgan.nn.convert and
fastgan._reference.torch_modules keep what a model computes."""
import torch


def assert_same_computation(original, converted, make_input, steps=2, rtol=1e-10, atol=1e-10):
    """`steps` passes in train mode, then `steps` in eval mode, each comparing the outputs and
    the gradients of the input and of every parameter; after each mode, every state_dict value
    (running statistics included), in order. make_input(seed=...) gives an input. The models
    are left in eval mode."""
    close = dict(rtol=rtol, atol=atol)
    seeds = iter(range(2 * steps))
    for training in (True, False):
        original.train(training), converted.train(training)
        for _ in range(steps):
            seed = next(seeds)
            results = []
            for model in (original, converted):
                x = make_input(seed=seed).requires_grad_()
                out = model(x)
                grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()])
                results.append((out, grads))
            (expected_out, expected_grads), (out, grads) = results
            mode = "train" if training else "eval"
            torch.testing.assert_close(out, expected_out, **close, msg=f"{mode} output")
            for index, (grad, expected) in enumerate(zip(grads, expected_grads, strict=True)):
                torch.testing.assert_close(grad, expected, **close,
                                           msg=f"{mode} gradient {index} (0: the input's)")
        for (name, value), expected in zip(converted.state_dict().items(),
                                           original.state_dict().values(), strict=True):
            torch.testing.assert_close(value, expected, **close, msg=name)
