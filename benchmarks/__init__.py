"""Benchmarks of issue 7: qcompiler against PyTorch quantized engines and ONNX Runtime int8.

Run `python3 benchmarks/run.py --help`; see benchmarks/README.md.
"""
