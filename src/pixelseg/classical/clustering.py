"""Non-parametric clustering of pixels: the number of segments is found from the data.

* Dirichlet-process Gaussian mixture (Blei & Jordan, "Variational Inference for Dirichlet Process
  Mixtures", Bayesian Analysis 2006), through scikit-learn's ``BayesianGaussianMixture``: a mixture
  with a stick-breaking prior over infinitely many components, truncated at ``max_components``;
  variational inference empties the components the data do not need.
* Mean shift (Comaniciu & Meer, "Mean Shift: A Robust Approach Toward Feature Space Analysis", PAMI
  2002), through scikit-learn's ``MeanShift``: every point climbs the kernel density estimate to a
  mode; the modes are the segments and the bandwidth sets how many there are.

Both work on the XYRGB features of :mod:`pixelseg.classical.kmeans`, are fitted on a random sample of
pixels and then label every pixel.
"""

from __future__ import annotations

import numpy as np

from .kmeans import xyrgb_features


def _sample(features: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    if features.shape[0] <= max_points:
        return features
    return features[np.random.default_rng(seed).choice(features.shape[0], max_points, replace=False)]


def _renumber(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].reshape(shape[:2])


def dpgmm_segments(image: np.ndarray, max_components: int = 20, spatial_weight: float = 0.5,
                   concentration: float = 0.01, seed: int = 0, max_points: int = 5000) -> np.ndarray:
    """Label map from a Dirichlet-process GMM; as many segments as components the data use."""
    from sklearn.mixture import BayesianGaussianMixture

    features = xyrgb_features(image, spatial_weight) / 255.0
    model = BayesianGaussianMixture(n_components=max_components, covariance_type="full",
                                    weight_concentration_prior_type="dirichlet_process",
                                    weight_concentration_prior=concentration, max_iter=300,
                                    random_state=seed, init_params="kmeans")
    model.fit(_sample(features, max_points, seed))
    return _renumber(model.predict(features), image.shape)


def mean_shift_segments(image: np.ndarray, bandwidth: float | None = None, spatial_weight: float = 0.5,
                        seed: int = 0, max_points: int = 3000) -> np.ndarray:
    """Label map from mean shift (flat kernel, binned seeds); the bandwidth is estimated when None."""
    from sklearn.cluster import MeanShift, estimate_bandwidth

    features = xyrgb_features(image, spatial_weight) / 255.0
    sample = _sample(features, max_points, seed)
    if bandwidth is None:
        bandwidth = float(estimate_bandwidth(sample, quantile=0.2, random_state=seed))
    model = MeanShift(bandwidth=bandwidth, bin_seeding=True).fit(sample)
    return _renumber(model.predict(features), image.shape)
