"""Reads a safetensors file with the real `safetensors` package and prints it as JSON.

Used by tests/test_checkpoint.cpp to prove that kiln's checkpoints load outside kiln:
  python3 read_safetensors.py numpy FILE           (safetensors.numpy, the PATH python3)
  /usr/bin/python3 read_safetensors.py torch FILE  (safetensors.torch, Debian's torch)
Prints {"metadata": {...}, "tensors": {name: {"dtype", "shape", "values"}}} on stdout, values
flattened (float32 widened exactly to Python floats, integers as ints), so the C++ side can
compare bit for bit. Exits 2 with a message on stderr when a package is missing: a missing
reader must fail the test, never skip it.
"""
import json
import os
import sys

# Debian's /usr/bin/python3 is externally managed, so scripts/setup.sh installs safetensors for
# it into this private directory (keep the two in step).
DEBIAN_SITE = os.environ.get("KILN_DEBIAN_SITE", os.path.expanduser("~/.cache/kiln/debian-python-site"))


def fail(message):
    print(f"read_safetensors.py ({sys.executable}): {message}", file=sys.stderr)
    sys.exit(2)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("numpy", "torch"):
        fail("usage: read_safetensors.py numpy|torch FILE")
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "torch":
        sys.path.insert(0, DEBIAN_SITE)
    try:
        from safetensors import safe_open
        if mode == "torch":
            import torch  # noqa: F401  (imported first so a missing torch is reported as such)
            from safetensors.torch import load_file
        else:
            from safetensors.numpy import load_file
    except ImportError as error:
        fail(f"cannot import {error.name} ({error}); run scripts/setup.sh")

    with safe_open(path, framework="pt" if mode == "torch" else "numpy") as handle:
        metadata = handle.metadata() or {}
    tensors = {}
    for name, tensor in load_file(path).items():
        tensors[name] = {
            "dtype": str(tensor.dtype),
            "shape": list(tensor.shape),
            "values": tensor.reshape(-1).tolist(),
        }
    json.dump({"metadata": metadata, "tensors": tensors}, sys.stdout)


if __name__ == "__main__":
    main()
