"""Mode coverage on Gaussian mixtures, as in VEEGAN and PacGAN."""
import torch

from fastgan._checks import check_number, check_tensor


def mode_coverage(samples, means, std, min_share=0.2):
    """Assigns each sample to its nearest mode; it is high quality when within 3 std of it.

    A mode counts as captured when it holds at least `min_share` of its fair share
    (len(samples) / len(means)) of the high-quality samples. Returns {"modes": captured modes,
    "high_quality": fraction of high-quality samples, "counts": high-quality samples per mode}."""
    check_tensor("samples", samples, dims=(2,))
    check_tensor("means", means, dims=(2,))
    if samples.shape[1] != means.shape[1]:
        raise ValueError(f"samples have {samples.shape[1]} features but means have "
                         f"{means.shape[1]}")
    if len(samples) == 0:
        raise ValueError("samples is empty")
    check_number("std", std, positive=True)
    check_number("min_share", min_share, minimum=0.0, maximum=1.0)
    distance, nearest = torch.cdist(samples.double().cpu(), means.double().cpu()).min(dim=1)
    high_quality = distance <= 3 * std
    counts = torch.bincount(nearest[high_quality], minlength=len(means))
    captured = int((counts >= min_share * len(samples) / len(means)).sum())
    return {"modes": captured, "high_quality": high_quality.double().mean().item(),
            "counts": counts.tolist()}
