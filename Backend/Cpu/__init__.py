"""CPU backend: the Backend interface over numpy, mirroring the CUDA backend name for name."""
