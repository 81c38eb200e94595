"""The pipeline's plumbing: params and their schema, atomic outputs and stage transactions, console output, the stage runner."""
