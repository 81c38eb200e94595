"""Model families: building CLAP offline, official checkpoints, tokenizers, hook sites and the exact direct decomposition."""
