"""Post-processing that refines a semantic model's scores: the fully connected CRF on the permutohedral
lattice (``dense_crf``, ``permutohedral``; ``DenseCRFRefiner`` for models' ``set_refiner`` and
``refine_logits`` for ``pixelseg predict --refine crf``) and CRF-as-RNN (``crf_as_rnn``). This package
imports nothing of pixelseg but ``errors`` and ``io``.
"""
