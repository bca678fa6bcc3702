"""Write a copy of a GGUF model with every tensor dequantized to F32.

llama.cpp's CPU kernels quantize activations (to Q8) before multiplying them with
quantized weights, so its results differ slightly from exact float32 math on the
dequantized weights, which is what the capture tool computes. Running llama.cpp on
this F32 copy removes that difference and isolates the forward-pass math.

Usage: python3 -m tools.capture.make_f32_gguf --model M.gguf --out M-f32.gguf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import run_cli
from .gguf_model import GgufFile

FILE_TYPE_ALL_F32 = 0


def write_f32_copy(source: Path, target: Path) -> None:
    """Copy metadata and tensors of ``source`` into ``target`` with F32 tensors."""
    import gguf

    model = GgufFile(source)
    writer = gguf.GGUFWriter(str(target), arch=model.field("general.architecture"))
    for key, field in model.metadata().items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = FILE_TYPE_ALL_F32 if key == "general.file_type" else field.contents()
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, main_type, sub_type=sub_type)
    for name in model.tensor_names():
        writer.add_tensor(name, model.tensor(name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv=None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python3 -m tools.capture.make_f32_gguf")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    return run_cli(lambda: write_f32_copy(args.model, args.out))


if __name__ == "__main__":
    sys.exit(main())
