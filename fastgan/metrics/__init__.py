"""Sample-quality metrics: mode coverage for the Gaussian mixtures, classifier score and
Frechet distance for the digits, the digits translation task's scores, and FID and Inception
Score for any images with a feature network the caller supplies (the FID Inception-v3 from
pytorch-fid's weights file, say)."""
from fastgan.metrics.digits import classifier_score, digits_classifier, digits_quality
from fastgan.metrics.frechet import (feature_statistics, frechet_distance,
                                     frechet_distance_from_statistics, inception_score)
from fastgan.metrics.inception import FIDInceptionV3, fid_inception_v3
from fastgan.metrics.mode_coverage import mode_coverage
from fastgan.metrics.translation import translation_scores

__all__ = ["mode_coverage", "classifier_score", "frechet_distance", "digits_quality",
           "digits_classifier", "translation_scores", "feature_statistics",
           "frechet_distance_from_statistics", "inception_score", "fid_inception_v3",
           "FIDInceptionV3"]
