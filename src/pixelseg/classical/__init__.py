"""Classical segmentation: clustering, graph cuts, grid CRF solvers, the dense CRF and CRF-as-RNN.

Import the submodules directly (``from pixelseg.refiners.dense_crf import dense_crf``); the optional
dependencies (scikit-learn, scikit-image, PyMaxflow, OpenCV) are only imported by the modules that
need them.
"""
