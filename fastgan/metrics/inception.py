"""The Inception-v3 variant that FID is defined with, built to load the weights file that
pytorch-fid publishes (pt_inception-2015-12-05-6726825d.pth, a port of TensorFlow's 2015
Inception graph). fastgan downloads nothing: the caller supplies the file.

The layers and their state_dict names are torchvision's Inception3 without the auxiliary
classifier, with the graph's own variants: the pooling branch of the 35x35, 17x17 and first 8x8
blocks averages over the window without the zero padding (TensorFlow's average pooling), the
last 8x8 block max-pools there, and the classifier has 1008 classes."""
import os

import torch
import torch.nn.functional as F
from torch import nn

from fastgan._checks import check_tensor
from fastgan.train.checkpoint import check_path

INPUT_SIZE = 299
FEATURES = 2048
CLASSES = 1008
_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# BatchNorm's step counter does nothing in eval mode, and an old file may not hold it.
_OPTIONAL_KEY_SUFFIX = ".num_batches_tracked"


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 0.001, the graph's) and ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _average_pool_without_padding(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool_same_size(x):
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def _chain(x, *layers):
    for layer in layers:
        x = layer(x)
    return x


class _Mixed35(nn.Module):
    """A 35x35 block: 1x1, 5x5, double 3x3 and pooled 1x1 branches."""

    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = _ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = _ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(in_channels, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            _chain(x, self.branch5x5_1, self.branch5x5_2),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            self.branch_pool(_average_pool_without_padding(x))], dim=1)


class _Reduce35To17(nn.Module):
    """Strided 3x3, strided double 3x3 and max-pooling branches: 288 -> 768 channels."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = _ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class _Mixed17(nn.Module):
    """A 17x17 block: 1x1, factorized 7x7 (1x7 then 7x1), doubly factorized 7x7 and pooled
    1x1 branches, the 7x7 ones `width` channels wide inside."""

    def __init__(self, in_channels, width):
        super().__init__()
        self.branch1x1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = _ConvBN(in_channels, width, 1)
        self.branch7x7_2 = _ConvBN(width, width, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(width, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(in_channels, width, 1)
        self.branch7x7dbl_2 = _ConvBN(width, width, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(width, width, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(width, width, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(width, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
            _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                   self.branch7x7dbl_4, self.branch7x7dbl_5),
            self.branch_pool(_average_pool_without_padding(x))], dim=1)


class _Reduce17To8(nn.Module):
    """Strided 3x3, factorized 7x7 then strided 3x3, and max-pooling branches: 768 -> 1280."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            _chain(x, self.branch3x3_1, self.branch3x3_2),
            _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                   self.branch7x7x3_4),
            F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class _Mixed8(nn.Module):
    """An 8x8 block: 1x1, 3x3 split into parallel 1x3 and 3x1, 3x3 then that split, and
    pooled 1x1 branches; `pool` is the pooling of the last one."""

    def __init__(self, in_channels, pool):
        super().__init__()
        self.pool = pool
        self.branch1x1 = _ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = _ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x):
        split = self.branch3x3_1(x)
        double = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(split), self.branch3x3_2b(split),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(self.pool(x))], dim=1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (random weights until loaded: use fid_inception_v3(weights_path)).

    Takes RGB images (N, 3, H, W) in [-1, 1], fastgan's range (map [0, 1] images, pytorch-fid's
    convention, with 2 * x - 1), of any size: they are resized to 299x299 (bilinear, corners
    not aligned) as pytorch-fid does. forward gives the (N, 2048) pool3 features FID is
    computed on; logits gives the (N, 1008) class logits for the Inception Score."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _Mixed35(192, pool_features=32)
        self.Mixed_5c = _Mixed35(256, pool_features=64)
        self.Mixed_5d = _Mixed35(288, pool_features=64)
        self.Mixed_6a = _Reduce35To17(288)
        self.Mixed_6b = _Mixed17(768, width=128)
        self.Mixed_6c = _Mixed17(768, width=160)
        self.Mixed_6d = _Mixed17(768, width=160)
        self.Mixed_6e = _Mixed17(768, width=192)
        self.Mixed_7a = _Reduce17To8(768)
        self.Mixed_7b = _Mixed8(1280, pool=_average_pool_without_padding)
        self.Mixed_7c = _Mixed8(FEATURES, pool=_max_pool_same_size)
        self.fc = nn.Linear(FEATURES, CLASSES)

    def forward(self, images):
        """(N, 2048) pool3 features of images (N, 3, H, W) in [-1, 1]."""
        check_tensor("images", images, dims=(4,))
        if images.shape[1] != 3:
            raise ValueError(f"images must be RGB (N, 3, H, W), got {tuple(images.shape)}; "
                             "repeat grey ones with images.expand(-1, 3, -1, -1)")
        x = F.interpolate(images.to(self.fc.weight.dtype), size=(INPUT_SIZE, INPUT_SIZE),
                          mode="bilinear", align_corners=False)
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = _chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = _chain(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                   self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                   self.Mixed_7c)
        return x.mean(dim=(2, 3))

    def logits(self, images):
        """(N, 1008) class logits of images (N, 3, H, W) in [-1, 1]: pass `inception.logits`
        to fastgan.metrics.inception_score."""
        return self.fc(self(images))


def _describe(keys, limit=5):
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_weights(path, state_dict, model):
    """ValueError naming weights_path unless state_dict has model's keys and shapes (its
    optional BatchNorm step counters aside)."""
    if not isinstance(state_dict, dict) or not all(
            isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ValueError(f"weights_path {path!r} does not hold a state_dict (a dict of tensors), "
                         f"but a {type(state_dict).__name__}")
    expected = {key: value.shape for key, value in model.state_dict().items()}
    required = {key for key in expected if not key.endswith(_OPTIONAL_KEY_SUFFIX)}
    missing = required - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    if missing or unexpected:
        problems = [f"{len(keys)} {kind} keys ({_describe(keys)})"
                    for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ValueError(f"weights_path {path!r} does not hold the FID Inception-v3's weights "
                         f"(pytorch-fid's {_WEIGHTS_FILE} format): {'; '.join(problems)}")
    mismatched = [f"{key} {tuple(state_dict[key].shape)}, expected {tuple(shape)}"
                  for key, shape in expected.items()
                  if key in state_dict and state_dict[key].shape != shape]
    if mismatched:
        raise ValueError(f"weights_path {path!r} has {len(mismatched)} tensors of the wrong "
                         f"shape for the FID Inception-v3: {'; '.join(mismatched[:5])}")


def fid_inception_v3(weights_path):
    """The FID Inception-v3 (FIDInceptionV3) with the weights in `weights_path`, in eval mode
    without gradients, on the CPU (move it with .to(device)).

    The file is pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or any state_dict with its
    keys and shapes; it is read with torch.load(weights_only=True), which runs no code from
    the file. Use the model as frechet_distance's feature_network and its `logits` as
    inception_score's classifier_network."""
    path = check_path("weights_path", weights_path)
    if not os.path.isfile(path):
        raise ValueError(f"weights_path {path!r} is not a file: fastgan downloads nothing, "
                         f"so download pytorch-fid's {_WEIGHTS_FILE} and pass its path")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load's errors for a bad file are of many types
        raise ValueError(f"weights_path {path!r} could not be read as a PyTorch weights file "
                         f"({type(error).__name__}: {error})") from error
    model = FIDInceptionV3()
    _check_weights(path, state_dict, model)
    # strict=False only lets the optional step counters be absent: every other key was checked.
    model.load_state_dict(state_dict, strict=False)
    return model.eval().requires_grad_(False)
