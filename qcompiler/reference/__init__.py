"""The numpy reference: quantization arithmetic and the interpreter (the oracle)."""
