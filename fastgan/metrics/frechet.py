"""Frechet distance (FID) and Inception Score for any image set, with a feature network the
caller supplies: the FID Inception-v3 (fastgan.metrics.fid_inception_v3, from pytorch-fid's
weights file) or any module mapping images to features or logits.

Networks run batch by batch in eval mode without gradients; their outputs are gathered on the
CPU in float64, and the statistics and scores are computed in float64."""
import warnings

import numpy as np
import torch
from torch import nn

from fastgan._checks import check_int, check_number, check_tensor
from fastgan.metrics import digits


def _module_behind(network):
    """The nn.Module that `network` is, or whose bound method it is (inception.logits): the one
    to put in eval mode. None for a plain function."""
    owner = getattr(network, "__self__", network)
    return owner if isinstance(owner, nn.Module) else None


def _check_network(name, network):
    if not callable(network):
        raise TypeError(f"{name} must be a callable mapping images (N, C, H, W) to (N, D) "
                        f"outputs (an nn.Module, say), got {type(network).__name__}")


def _network_outputs(name, network, images, batch_size, device):
    """`network`'s outputs for `images` as an (N, D) float64 CPU tensor; (N, D, 1, 1) outputs
    (pytorch-fid's pool3 maps) are flattened. Batches of at most `batch_size` images run on
    `device` (default: the network's parameters' device, else the images') in eval mode without
    gradients; the modules' train/eval modes are restored afterwards. `name` is the network's
    argument name, for the errors."""
    _check_network(name, network)
    check_tensor("images", images, dims=(4,))
    batch_size = check_int("batch_size", batch_size, minimum=1)
    module = _module_behind(network)
    if device is None:
        parameter = next(module.parameters(), None) if module is not None else None
        device = parameter.device if parameter is not None else images.device
    modes = ([(submodule, submodule.training) for submodule in module.modules()]
             if module is not None else [])
    outputs = []
    try:
        if module is not None:
            module.eval()
        with torch.no_grad():
            for batch in images.split(batch_size):
                output = network(batch.to(device))
                if (not isinstance(output, torch.Tensor) or output.dim() not in (2, 4)
                        or output.shape[0] != len(batch) or output.shape[2:] not in ((), (1, 1))):
                    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else output
                    raise ValueError(f"{name} must map a batch of {len(batch)} images to "
                                     f"({len(batch)}, D) or ({len(batch)}, D, 1, 1) outputs, "
                                     f"got {shape}")
                outputs.append(output.detach().flatten(1).to("cpu", torch.float64))
    finally:
        for submodule, training in modes:  # each as it was: modes may differ inside
            submodule.training = training
    outputs = torch.cat(outputs)
    if not torch.isfinite(outputs).all():
        raise ValueError(f"{name} returned non-finite values (inf or nan) for some images")
    return outputs


def _check_image_count(name, images, minimum, why):
    check_tensor(name, images, dims=(4,))
    if len(images) < minimum:
        raise ValueError(f"{name} must hold at least {minimum} images ({why}), got {len(images)}")


def feature_statistics(images, feature_network, *, batch_size=50, device=None):
    """(mu, sigma): the float64 mean (D,) and covariance (D, D) (unbiased, as numpy.cov) of
    feature_network's features of `images` (N, C, H, W), N >= 2. Cache a reference set's
    statistics and pass them to frechet_distance as `reference`."""
    _check_image_count("images", images, 2, "a covariance needs two samples")
    features = _network_outputs("feature_network", feature_network, images, batch_size, device)
    return features.mean(dim=0), torch.cov(features.T).reshape(features.shape[1], -1)


def _as_float64_array(name, value, dims):
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    elif isinstance(value, np.ndarray):
        value = value.astype(np.float64)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, "
                        f"got {type(value).__name__}")
    if value.ndim != dims:
        raise ValueError(f"{name} must have {dims} dimension{'s' if dims > 1 else ''}, "
                         f"got shape {value.shape}")
    if not np.isfinite(value).all():
        raise ValueError(f"{name} holds non-finite values (inf or nan)")
    return value


def _check_statistics(names, mu, sigma, dimension=None):
    mu = _as_float64_array(names[0], mu, 1)
    sigma = _as_float64_array(names[1], sigma, 2)
    dimension = len(mu) if dimension is None else dimension
    if len(mu) != dimension:
        raise ValueError(f"{names[0]} must have shape ({dimension},) like mu1, "
                         f"got {mu.shape}")
    if sigma.shape != (dimension, dimension):
        raise ValueError(f"{names[1]} must have shape ({dimension}, {dimension}) to match its "
                         f"mean, got {sigma.shape}")
    return mu, sigma


def _frechet_distance(statistics1, statistics2, eps):
    """The distance between checked float64 statistics, computed as pytorch-fid does."""
    import scipy.linalg  # imported on use: `import fastgan` stays quick

    (mu1, sigma1), (mu2, sigma2) = statistics1, statistics2
    # pytorch-fid passes disp=False, which only adds an error estimate to the same root (and
    # which SciPy deprecated in 1.16). The root is complex when rounding puts eigenvalues of
    # the product below zero.
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        # Some singular products have no finite root (sqrtm gives inf); a small ridge on both
        # covariances makes the product invertible, as pytorch-fid does.
        warnings.warn(f"the product of the covariances is singular: adding eps={eps} to their "
                      "diagonals for its square root", RuntimeWarning, stacklevel=3)
        ridge = eps * np.eye(len(sigma1))
        root = scipy.linalg.sqrtm((sigma1 + ridge) @ (sigma2 + ridge))
    if np.iscomplexobj(root):
        # Rounding leaves a negligible imaginary part; a large one means the inputs are not
        # covariances (symmetric positive semi-definite), and the distance would be meaningless.
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"the square root of sigma1 @ sigma2 has an imaginary component of "
                             f"up to {np.abs(root.imag).max():.3g}: sigma1 and sigma2 must be "
                             "covariance matrices (symmetric positive semi-definite)")
        root = root.real
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2)
                 - 2 * np.trace(root))


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)) in float64, computed as
    pytorch-fid does: scipy.linalg.sqrtm of sigma1 @ sigma2, retried with eps added to both
    diagonals (with a RuntimeWarning) when that root is not finite, and its imaginary part
    dropped when negligible (ValueError otherwise). The arguments are torch tensors or numpy
    arrays (pytorch-fid's .npz statistics work as they are): means (D,), covariances (D, D)."""
    statistics1 = _check_statistics(("mu1", "sigma1"), mu1, sigma1)
    statistics2 = _check_statistics(("mu2", "sigma2"), mu2, sigma2, len(statistics1[0]))
    check_number("eps", eps, positive=True)
    return _frechet_distance(statistics1, statistics2, eps)


def frechet_distance(images, reference, feature_network=None, *, batch_size=50, device=None):
    """The Frechet distance between Gaussians fitted to the features of `images` and of
    `reference` (FID when feature_network is the FID Inception-v3).

    feature_network=None: the bundled digits classifier's features, for grey digits
    (fastgan.metrics.digits.frechet_distance). Otherwise a callable (an nn.Module, say) mapping
    a batch (n, C, H, W) of images to (n, D) or (n, D, 1, 1) features, run in eval mode
    without gradients in batches of `batch_size` on `device` (default: the network's
    parameters' device, else the images'). `reference` is then images or their cached
    (mu, sigma) from feature_statistics. Both sets need at least two images."""
    if feature_network is None:
        return digits.frechet_distance(images, reference)
    _check_network("feature_network", feature_network)
    # Both arguments are checked before any features are computed, which can take minutes.
    cached = isinstance(reference, (tuple, list))
    if cached:
        if len(reference) != 2:
            raise ValueError(f"reference must be images or a (mu, sigma) pair, got a "
                             f"{type(reference).__name__} of length {len(reference)}")
        statistics2 = _check_statistics(("reference[0] (mu)", "reference[1] (sigma)"),
                                        *reference)
    else:
        _check_image_count("reference", reference, 2, "a covariance needs two samples")
    statistics1 = _check_statistics(("mu1", "sigma1"), *feature_statistics(
        images, feature_network, batch_size=batch_size, device=device))
    if not cached:
        statistics2 = _check_statistics(("mu2", "sigma2"), *feature_statistics(
            reference, feature_network, batch_size=batch_size, device=device))
    elif len(statistics2[0]) != len(statistics1[0]):
        raise ValueError(f"reference's statistics have {len(statistics2[0])} features but "
                         f"feature_network gives {len(statistics1[0])}")
    return _frechet_distance(statistics1, statistics2, eps=1e-6)


def inception_score(images, classifier_network, splits=10, *, batch_size=50, device=None):
    """(mean, std) over `splits` consecutive parts of `images` (sizes differing by at most one)
    of exp(E_x KL(p(y|x) || p(y))), p(y) the part's mean of p(y|x): the Inception Score with
    the FID Inception-v3's `logits`, from 1 (all alike, or no confident class) up to the
    number of classes (confident and balanced). classifier_network maps a batch (n, C, H, W) to
    (n, K) logits; the softmax is applied here, in float64. The std is the population one
    (numpy's default), as in the original definition."""
    _check_network("classifier_network", classifier_network)
    check_tensor("images", images, dims=(4,))
    splits = check_int("splits", splits, minimum=1)
    if len(images) < splits:
        raise ValueError(f"splits ({splits}) must not exceed the number of images "
                         f"({len(images)}): every part needs an image")
    logits = _network_outputs("classifier_network", classifier_network, images, batch_size,
                             device)
    scores = []
    for part in logits.tensor_split(splits):
        log_probabilities = part.log_softmax(dim=1)
        probabilities = log_probabilities.exp()
        marginal = probabilities.mean(dim=0)
        # xlogy: a class no image of the part gives any probability contributes 0, not nan
        kl = ((probabilities * log_probabilities).sum(dim=1)
              - torch.special.xlogy(probabilities, marginal).sum(dim=1))
        scores.append(kl.mean().exp())
    scores = torch.stack(scores)
    return scores.mean().item(), scores.std(correction=0).item()
