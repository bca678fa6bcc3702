"""Teacher capture: run the Gemma 3 teacher over a corpus and store its signals.

The package turns a GGUF teacher and a raw text corpus into a capture directory
(``manifest.json`` plus safetensors shards, see ``docs/capture-format.md``) that the
C++ trainer reads. Entry point: ``python3 -m tools.capture --help``.
"""

__version__ = "1.0.0"
