"""Drives the gateway with the official `openai` Python client, as an
application would: chat and text completions, streaming with usage, the model
list, and the SDK's typed error for an unknown model."""

import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
# The key, when the gateway wants one.
api_key = sys.argv[3] if len(sys.argv) > 3 else "unused"
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say something about the sea."}],
    max_tokens=8,
)
assert chat.choices[0].message.role == "assistant"
assert chat.choices[0].message.content, chat
assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
assert chat.usage.prompt_tokens_details is not None
print("chat:", repr(chat.choices[0].message.content))

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Count the hills."}],
    max_tokens=8,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
    if chunk.usage is not None:
        usage = chunk.usage
assert "".join(pieces), "streamed some text"
assert usage is not None and usage.completion_tokens > 0, usage
print("stream:", repr("".join(pieces)))

completion = client.completions.create(model=model, prompt="The wind", max_tokens=5)
assert completion.choices[0].text is not None
print("completion:", repr(completion.choices[0].text))

models = [m.id for m in client.models.list()]
assert model in models, models

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e

if len(sys.argv) > 3:
    wrong = openai.OpenAI(base_url=base_url, api_key="sk-llmgw-wrong", max_retries=0)
    try:
        wrong.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        raise SystemExit("expected AuthenticationError")
    except openai.AuthenticationError as e:
        assert e.code == "invalid_api_key", e

print("all openai client checks passed")
