"""Audio decoding, the dataset registry, fetching sources, and the readers of the stores between stages."""
