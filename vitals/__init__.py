"""The vital-sign domain: metric catalogue, SenML codec, sample batches, normalisation.

A leaf package: it imports nothing else of healthiot, so devices, storage, the bridge, the
API and the simulated firmware can all depend on it.
"""
