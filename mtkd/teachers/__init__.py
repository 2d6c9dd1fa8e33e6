"""The one teacher layer: build, load, freeze, run teachers (`ensemble`), output cache (`cache`), I_MT (`aggregated`).
Imports utils, transforms, weights, training, config and metrics; never models or methods."""
