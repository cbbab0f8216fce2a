"""Export a finished run for other runtimes, with a parity check on every export.

    tuneloop export runs/airline-sentiment --format merged          # safetensors folder (transformers, vLLM)
    tuneloop export runs/airline-sentiment --format gguf --dtype f16  # one .gguf file (llama.cpp, Ollama)

source.py reads the run folder, merged.py and gguf.py write the artifacts, parity.py proves the artifact
answers like the trained model, cli.py is the `tuneloop export` entry point.
"""
