"""Post-processing that refines a semantic model's scores: the dense CRF and CRF-as-RNN."""
