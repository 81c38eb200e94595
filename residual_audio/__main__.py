"""`python -m residual_audio`: list, explain and run the pipeline's stages (see `cli`)."""

from .cli import main

main()
