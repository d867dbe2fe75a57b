"""CUDA backend: the Backend interface over pycuda, mirroring the CPU backend name for name.

Importing this package alone touches no device; the device and its primary context are taken on the first import of
`Driver` (which every other module of the package imports).
"""
