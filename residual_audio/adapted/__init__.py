"""Use the adapted model: `export` refits a method on every labelled clip of a dataset into one
code-free file (`bundle`: safetensors with a JSON header), `predict` labels new audio files with it."""
