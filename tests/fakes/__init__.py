"""Strict stand-ins for the GPU-only APIs (TensorRT 10 / 11, cuda-python's ``cuda.bindings.runtime``,
onnxruntime-gpu), used by tests/test_gpu_harness.py to run fastgen's GPU code paths on a CPU.

They are a test harness, never part of the product: each copies the real API's names, signatures, return
conventions and per-version removals (see each module's docstring for the sources read) and executes the
engine's math on the CPU with onnxruntime, so a wrong call fails here as it would on hardware.
"""
