"""Classical segmentation without a trained network: k-means and SLIC superpixels (``kmeans``), mean shift
and Dirichlet-process mixtures (``clustering``), graph cuts and GrabCut (``graphcut``) on grid energies
(``grid_energy``), and the sliding-window patch classifier (``sliding_window``).

The dense CRF and CRF-as-RNN, which refine a network's scores, live in :mod:`pixelseg.refiners`. Import
the submodules directly (``from pixelseg.classical.graphcut import grabcut``); the optional dependencies
(scikit-learn, scikit-image, PyMaxflow, OpenCV) are only imported by the modules that need them. This
package imports nothing of pixelseg above ``refiners``, ``io`` and ``errors``.
"""
