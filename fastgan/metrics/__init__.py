"""Sample-quality metrics: mode coverage for the Gaussian mixtures, classifier score and
Frechet distance for the digits, and the digits translation task's scores."""
from fastgan.metrics.digits import (classifier_score, digits_classifier, digits_quality,
                                    frechet_distance)
from fastgan.metrics.mode_coverage import mode_coverage
from fastgan.metrics.translation import translation_scores

__all__ = ["mode_coverage", "classifier_score", "frechet_distance", "digits_quality",
           "digits_classifier", "translation_scores"]
