"""Stream a chat completion with the official `openai` client from each base URL given.

Usage: python3 openai_interop.py MODEL URL [URL...]
Prints one JSON object per URL: the streamed text, the number of content chunks, and usage.
"""

import json
import sys

import openai


def main():
    model = sys.argv[1]
    for base in sys.argv[2:]:
        client = openai.OpenAI(base_url=base.rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=30)
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Write a short poem about rail yards."}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, chunks, usage = "", 0, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage.model_dump()
            for choice in chunk.choices:
                if choice.delta.content:
                    text += choice.delta.content
                    chunks += 1
        print(json.dumps({"url": base, "text": text, "chunks": chunks, "usage": usage}), flush=True)


if __name__ == "__main__":
    main()
