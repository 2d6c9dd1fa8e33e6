"""Pieces of single KD methods that the models compose: DUKD, DTKD entropy routing, feature taps, CrossKD.
Imports utils, transforms, weights, training, metrics and losses; never models, teachers or data."""
