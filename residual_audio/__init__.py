"""ResiDual for Audio: per-head geometry of LAION-CLAP's HTS-AT encoder and ResiDual adaptation."""

__version__ = "0.1.0"
