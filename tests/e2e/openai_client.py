"""The official openai Python client against a live agentrt server.

Run by tests/e2e/openai.rs with the server's base URL; prints "ok" when every check holds:
chat, streamed chat with usage, completions, NotFoundError for an unknown model, and
BadRequestError for a prompt past the context and for tools.
"""

import sys

import openai
from openai import OpenAI


def main(base: str) -> None:
    client = OpenAI(base_url=base + "/v1", api_key="not-checked", max_retries=0)
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": "Write a Python function that adds two numbers."}]

    resp = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    text = resp.choices[0].message.content
    assert text, resp
    assert resp.choices[0].finish_reason in ("stop", "length"), resp
    assert 1 <= resp.usage.completion_tokens <= 12, resp.usage

    pieces, usage = [], None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    assert "".join(pieces) == text, (pieces, text)
    assert usage is not None and usage.total_tokens == resp.usage.total_tokens, usage

    completion = client.completions.create(model=model, prompt="def add(a, b):\n", max_tokens=8, temperature=0)
    assert completion.choices[0].text, completion

    assert client.models.retrieve(model).id == model
    try:
        client.models.retrieve("no-such-model")
    except openai.NotFoundError as e:
        assert e.code == "MODEL_001", e.body
    else:
        raise AssertionError("an unknown model was retrieved")

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
    except openai.NotFoundError as e:
        assert e.code == "MODEL_001", e.body
    else:
        raise AssertionError("an unknown model was accepted")

    # A prompt past the context is the BadRequestError clients trim history on.
    context = getattr(client.models.retrieve(model), "max_model_len")
    long = [{"role": "user", "content": "hello " * (2 * context)}]
    try:
        client.chat.completions.create(model=model, messages=long, max_tokens=8)
    except openai.BadRequestError as e:
        assert e.code == "MODEL_004" and e.param == "messages", e.body
        assert "maximum context length is" in e.message, e.message
    else:
        raise AssertionError("a prompt past the context was accepted")

    # Tools are refused, naming the field, rather than ignored.
    add = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
    try:
        client.chat.completions.create(model=model, messages=messages, tools=[add])
    except openai.BadRequestError as e:
        assert e.code == "VAL_002" and e.param == "tools", e.body
    else:
        raise AssertionError("tools were accepted")
    print("ok", repr(text))


if __name__ == "__main__":
    main(sys.argv[1])
