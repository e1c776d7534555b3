"""Teacher backends: who runs the model that sees the long prompt.

    server        an OpenAI-compatible HTTP server (vLLM, SGLang, TGI, ...)
    vllm_engine   vLLM's offline engine in this process
"""
