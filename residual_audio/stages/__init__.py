"""The DVC stages' logic: one module per stage, each with one entry point `run(params[, dataset])`."""
