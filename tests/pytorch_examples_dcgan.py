"""pytorch/examples' DCGAN (dcgan/main.py) as a user writes it, its sizes made arguments: the
published model (64x64 RGB images, the defaults) for benchmarks/bench_convert.py, and scaled-down
ones for tests/test_convert.py. image_size is a power of two, at least 8: one stride-2 layer per
doubling from 4x4."""
import torch
from torch import nn

NZ, NGF, NDF, NC = 100, 64, 64, 3  # pytorch/examples' defaults


def weights_init(m):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        torch.nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        torch.nn.init.normal_(m.weight, 1.0, 0.02)
        torch.nn.init.zeros_(m.bias)


def _doublings(image_size):
    """Stride-2 layers between 4x4 and image_size x image_size."""
    doublings = image_size.bit_length() - 3
    if image_size < 8 or image_size != 4 << doublings:
        raise ValueError(f"image_size must be a power of two, at least 8, got {image_size}")
    return doublings


class _DataParallel(nn.Module):
    """self.main run as pytorch/examples runs it: data-parallel on several GPUs."""

    def __init__(self, ngpu):
        super().__init__()
        self.ngpu = ngpu

    def run_main(self, input):
        # A branch on a tensor attribute: torch.fx cannot trace a forward through this.
        if input.is_cuda and self.ngpu > 1:
            return nn.parallel.data_parallel(self.main, input, range(self.ngpu))
        return self.main(input)


class Generator(_DataParallel):
    """z (nz x 1 x 1) -> (ngf * 2^(d-1)) x 4 x 4 -> ... -> ngf x image_size/2 -> nc x image_size,
    d = the number of doublings."""

    def __init__(self, ngpu=1, nz=NZ, ngf=NGF, nc=NC, image_size=64):
        super().__init__(ngpu)
        doublings = _doublings(image_size)
        widths = [ngf * 2 ** i for i in reversed(range(doublings))]
        layers = [nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False),
                  nn.BatchNorm2d(widths[0]),
                  nn.ReLU(True)]
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(width_in, width_out, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width_out),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, input):
        return self.run_main(input)


class Discriminator(_DataParallel):
    """nc x image_size -> ndf x image_size/2 -> ... -> (ndf * 2^(d-1)) x 4 x 4 -> a probability."""

    def __init__(self, ngpu=1, nc=NC, ndf=NDF, image_size=64):
        super().__init__(ngpu)
        doublings = _doublings(image_size)
        widths = [ndf * 2 ** i for i in range(doublings)]
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(width_in, width_out, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width_out),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, input):
        return self.run_main(input).view(-1, 1).squeeze(1)
