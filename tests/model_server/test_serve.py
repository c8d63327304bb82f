"""The embedded server's scoring route (model_server.serve.option_logprobs) on the shipped 135M model, in process:
the KV-cache reuse across options must not change a single log-probability."""

from __future__ import annotations

import pytest

from agents.prompts import ANSWER_OPENING, EXPERT_SYSTEM, chatml
from model_server.manager import local_gguf
from model_server.serve import option_logprobs

OPTIONS = [" halve the learning rate", " raise dropout", " keep every hyperparameter as it is"]


@pytest.fixture(scope="module")
def llama():
    from llama_cpp import Llama

    return Llama(model_path=str(local_gguf()), n_ctx=512, logits_all=True, n_threads=2, seed=0, verbose=False)


def test_option_scores_do_not_depend_on_the_cache_the_order_or_a_completion_in_between(llama):
    prompt = chatml(EXPERT_SYSTEM, "val_acc 0.91, no new best for 3 epochs. What should we do?", ANSWER_OPENING)
    first = option_logprobs(llama, prompt, OPTIONS)
    assert all(len(lp) >= 2 for lp in first)  # every option is several tokens, each scored
    assert all(x < 0 for lp in first for x in lp)
    llama.create_completion("Hello", max_tokens=4, temperature=0.0)  # the cache now holds something else
    reversed_order = option_logprobs(llama, prompt, OPTIONS[::-1])[::-1]
    llama.reset()
    fresh = [option_logprobs(llama, prompt, [option])[0] for option in OPTIONS]
    for a, b, c in zip(first, reversed_order, fresh):
        assert a == pytest.approx(b, abs=1e-4) and a == pytest.approx(c, abs=1e-4)


def test_an_option_beyond_the_context_or_adding_nothing_is_a_value_error(llama):
    with pytest.raises(ValueError, match="beyond the context"):
        option_logprobs(llama, "word " * 600, [" more"])
    with pytest.raises(ValueError, match="adds no token"):
        option_logprobs(llama, "We should", [""])
