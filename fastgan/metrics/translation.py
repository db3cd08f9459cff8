"""Scores of a translation A -> B on the bundled digits task (fastgan.data.digits_translation),
whose answer is known: the appearance change T."""
import numpy as np
import torch

from fastgan.data.translation import appearance_change

# The share of domain B's images that scores the classifier itself (trained on the rest).
CLASSIFIER_HOLDOUT = 0.25


def _features(images):
    return images.detach().to("cpu", torch.float64).flatten(1).numpy()


def translation_scores(translated, test, domain_b):
    """{"class_preservation", "pixel_error", "classifier_accuracy"} of `translated` (the images
    a model made from test's, in order):
    - class_preservation: the accuracy, on translated, of a classifier of real B images (a
      logistic regression on pixels, trained on three quarters of domain_b) with test's labels,
      over that classifier's accuracy on the held-out quarter of domain_b;
    - pixel_error: mean |translated - T(test images)|;
    - classifier_accuracy: the classifier's accuracy on held-out real B."""
    from sklearn.linear_model import LogisticRegression

    test_images, test_labels = test.tensors
    if translated.shape != test_images.shape:
        raise ValueError(f"translated must have the test images' shape "
                         f"{tuple(test_images.shape)}, got {tuple(translated.shape)}")
    b_images, b_labels = domain_b.tensors
    held_out = int(round(CLASSIFIER_HOLDOUT * len(b_images)))
    classifier = LogisticRegression(max_iter=2000)
    classifier.fit(_features(b_images[held_out:]), b_labels[held_out:].numpy())
    classifier_accuracy = float(np.mean(classifier.predict(_features(b_images[:held_out]))
                                        == b_labels[:held_out].numpy()))
    accuracy = float(np.mean(classifier.predict(_features(translated)) == test_labels.numpy()))
    target = appearance_change(test_images)
    pixel_error = float((translated.detach().cpu().float() - target).abs().mean())
    return {"class_preservation": accuracy / classifier_accuracy, "pixel_error": pixel_error,
            "classifier_accuracy": classifier_accuracy}
