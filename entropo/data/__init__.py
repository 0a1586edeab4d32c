"""Prompt data: dataset loading (files, directories, hub datasets, embedded tasks), prompt
rendering and length filtering, and the resumable prompt sampler."""
