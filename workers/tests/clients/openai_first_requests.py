"""A new user's first requests, with the official `openai` client, against a
worker serving SmolLM2-135M-Instruct as the demo configures it
(`config/worker-smollm2.toml`): a plain question answers sensibly, log
probabilities are real, `n` gives several choices, penalties and bias act, and
what the worker cannot honour is refused by name.

Usage: openai_first_requests.py BASE_URL MODEL
"""

import math
import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
france = [{"role": "user", "content": "What is the capital of France?"}]

# No sampling parameters: the worker's defaults for this model.
plain = client.chat.completions.create(model=model, messages=france)
answer = plain.choices[0].message.content
print("plain:", repr(answer))
assert "Paris" in answer, answer
assert plain.choices[0].finish_reason == "stop", plain

# Log probabilities: each token's, and its two most likely alternatives', of
# the distribution the token was drawn from.
lp = client.chat.completions.create(model=model, messages=france, logprobs=True, top_logprobs=2, max_tokens=12)
content = lp.choices[0].logprobs.content
# Usage counts an end-of-sequence token, which is not text and has no entry.
def entries_match(choices, usage):
    stops = sum(c.finish_reason == "stop" for c in choices)
    entries = sum(len(c.logprobs.content) for c in choices)
    return usage.completion_tokens - stops <= entries <= usage.completion_tokens
assert entries_match(lp.choices, lp.usage), lp
assert "".join(t.token for t in content) == lp.choices[0].message.content
for t in content:
    assert t.logprob <= 0 and len(t.top_logprobs) == 2, t
    top = [a.logprob for a in t.top_logprobs]
    assert top[0] >= top[1] and t.logprob <= top[0] + 1e-6, t
    # Probabilities of distinct tokens: together at most 1.
    assert sum(math.exp(a) for a in top) <= 1 + 1e-4, t
    assert bytes(t.bytes).decode("utf-8", "replace") == t.token, t
total = sum(t.logprob for t in content)
print(f"logprobs: {len(content)} tokens, sum {total:.3f}, first {content[0].token!r} {content[0].logprob:.3f}")
# Not all certain: a real distribution, not zeros.
assert any(t.logprob < -1e-3 for t in content), content

# Streamed, the same request's log probabilities arrive with its text.
streamed = []
for chunk in client.chat.completions.create(
    model=model, messages=france, logprobs=True, top_logprobs=2, max_tokens=12, stream=True
):
    for choice in chunk.choices:
        if choice.logprobs and choice.logprobs.content:
            streamed.extend(choice.logprobs.content)
assert [t.token for t in streamed] == [t.token for t in content], (streamed, content)

# Two choices, sampled independently; the prompt counted once.
two = client.chat.completions.create(model=model, messages=france, n=2, max_tokens=16, temperature=1.0, logprobs=True)
assert [c.index for c in two.choices] == [0, 1], two
assert all(c.message.content for c in two.choices), two
assert two.usage.prompt_tokens == plain.usage.prompt_tokens, (two.usage, plain.usage)
assert entries_match(two.choices, two.usage), two
print("n=2:", [c.message.content for c in two.choices])

# Penalties act: greedy, the haiku repeats itself; with a frequency penalty, less.
haiku = [{"role": "user", "content": "Write a haiku about rain."}]
def repeats(text):
    words = text.lower().split()
    return len(words) - len(set(words))
greedy = client.chat.completions.create(model=model, messages=haiku, temperature=0, max_tokens=48).choices[0].message.content
penalized = client.chat.completions.create(
    model=model, messages=haiku, temperature=0, max_tokens=48, frequency_penalty=1.5, presence_penalty=0.5
).choices[0].message.content
print("greedy:", repr(greedy), "\npenalized:", repr(penalized))
assert repeats(penalized) < repeats(greedy), (greedy, penalized)

# What the worker cannot honour is refused, naming the parameter.
for extra, param in [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}}}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]}, "tools"),
]:
    try:
        client.chat.completions.create(model=model, messages=france, **extra)
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body["param"] == param, e.body
        print("refused:", e.body["message"])
    else:
        raise AssertionError(f"{param} was accepted")
print("ok")
