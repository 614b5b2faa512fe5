"""llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`), for testing melt against a real
server installed from a package. Its arguments are the server's. The one addition: the model loads under melt's
guard against llama.cpp's AMX kernels, which crash on CPUs that have AMX (see melt.llm.local)."""

from llama_cpp.server.__main__ import main

from melt.llm.local import without_amx_kernels

if __name__ == "__main__":
    with without_amx_kernels():
        main()
