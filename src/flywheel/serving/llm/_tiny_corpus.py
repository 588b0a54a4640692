"""The text the tiny local model learns from: prose and dialogues written for this project.

Everything here was written by the Flywheel authors for this purpose (no third-party text). The
prose describes the platform in plain sentences; the dialogues are generated from a few templates
so that the model sees the chat format, tool calls and tool results many times.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

PROSE = """\
Flywheel is a platform for the whole machine learning loop of a product team.
Features are computed from events and stored offline and online.
A training job reads a training dataset and writes a model version.
The registry keeps every model version with its signature, its hashes and its lineage.
A model version is served behind an endpoint.
An endpoint can split traffic between two versions for a canary or an A/B test.
A canary sends a small share of the traffic to the new version and watches its errors.
When the canary is healthy the new version takes all the traffic.
When the canary fails the endpoint rolls back to the old version.
Shadow traffic copies each request to a second version and throws its answer away.
The feature store answers point in time joins so that training never sees the future.
The online store keeps the latest value of each feature for fast lookups.
Materialization copies features from the offline store to the online store.
A stream processor reads events and updates windowed aggregations.
The scheduler runs training jobs with quotas, gang scheduling and preemption.
A job that is preempted resumes from its last checkpoint.
Experiments assign users to variants with a stable hash.
A bandit learns which variant earns more and sends more traffic to it.
The recommender is built only from the parts of the platform.
It blends candidates from several sources, ranks them and re-ranks the list.
The dashboard shows features, runs, models, endpoints and experiments.
Every request is measured: latency, errors, throughput and drift.
Drift compares the live inputs with the reference data of the model.
The language model engine schedules work one token at a time.
Requests join and leave the running batch at every step.
The key value cache is kept in blocks of a fixed size.
A block table maps the positions of a sequence to its blocks.
When the cache is full a request waits in the queue or is preempted and computed again.
A repeated system prompt is found in the prefix cache and is not computed again.
Sampling uses a temperature, a top p and a top k, and a seed makes it reproducible.
A stop string ends the answer even when it is split across tokens.
The answer is streamed token by token to the client.
The client can cancel a request and its blocks are freed at once.
Tools let the model ask the platform for facts it does not know.
The model writes a tool call, the platform runs the tool and returns the result.
Then the model reads the result and answers the user.
Good tests fail when the feature is broken.
Benchmarks compare the platform with a named peer in the same run.
The load average is printed with every benchmark.
Errors name the field that is wrong and say what to do next.
Writes are atomic, so a crash leaves nothing half written.
"""

_MODELS = ["ranker", "two-tower", "churn", "fraud", "search", "ctr", "pricing", "forecast"]
_ENDPOINTS = ["shop-recs", "checkout", "home-feed", "search-api", "fraud-check"]
_STAGES = ["production", "staging", "archived"]
_CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Quito", "Tunis", "Perth"]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_model",
            "description": "Look up a registered model and its production version.",
            "parameters": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_endpoint",
            "description": "Describe an endpoint and its traffic split.",
            "parameters": {
                "type": "object",
                "properties": {"endpoint": {"type": "string"}},
                "required": ["endpoint"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
]

_GREETINGS = ["Hello", "Hi", "Good morning", "Hello there"]
_FACTS = [
    ("What is an endpoint?", "An endpoint serves a model version and can split traffic."),
    ("What is a canary?", "A canary sends a small share of the traffic to a new version."),
    ("What is the registry?", "The registry keeps every model version with its lineage."),
    ("What is the feature store?", "The feature store keeps features offline and online."),
    ("What does the scheduler do?", "The scheduler runs training jobs with quotas."),
    ("What is a bandit?", "A bandit sends more traffic to the variant that earns more."),
    ("What is drift?", "Drift compares live inputs with the reference data."),
    ("What is the prefix cache?", "The prefix cache reuses blocks of a repeated prompt."),
    ("How are answers streamed?", "The answer is streamed to the client token by token."),
    ("What is Flywheel?", "Flywheel is a platform for the whole machine learning loop."),
]


def dialogues(seed: int, count: int = 240) -> list[list[dict[str, Any]]]:
    """``count`` chat conversations (OpenAI message dicts), reproducible for ``seed``.

    The ones with tool calls are rendered with ``TOOLS`` by the builder.
    """
    rng = random.Random(seed)
    out: list[list[dict[str, Any]]] = []
    for _ in range(count):
        kind = rng.randrange(4)
        system = {"role": "system", "content": "You are the Flywheel assistant. Answer briefly."}
        if kind == 0:
            question, answer = rng.choice(_FACTS)
            out.append(
                [
                    system,
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            )
        elif kind == 1:
            greeting = rng.choice(_GREETINGS)
            out.append(
                [
                    {"role": "user", "content": f"{greeting}!"},
                    {
                        "role": "assistant",
                        "content": f"{greeting}! How can I help you with Flywheel today?",
                    },
                ]
            )
        elif kind == 2:
            model = rng.choice(_MODELS)
            version = rng.randint(1, 9)
            stage = rng.choice(_STAGES)
            call = {"name": "get_model", "arguments": {"name": model}}
            result = json.dumps({"name": model, "version": version, "stage": stage})
            out.append(
                [
                    {"role": "user", "content": f"Which version of {model} is live?"},
                    {"role": "assistant", "content": "", "tool_calls": [_call(call)]},
                    {"role": "tool", "content": result},
                    {
                        "role": "assistant",
                        "content": f"Version {version} of {model} is in {stage}.",
                    },
                ]
            )
        else:
            if rng.random() < 0.5:
                endpoint = rng.choice(_ENDPOINTS)
                share = rng.choice([5, 10, 20, 50])
                call = {"name": "get_endpoint", "arguments": {"endpoint": endpoint}}
                result = json.dumps({"endpoint": endpoint, "canary_percent": share})
                question = f"How is traffic split on {endpoint}?"
                answer = f"The canary on {endpoint} gets {share} percent of the traffic."
            else:
                city = rng.choice(_CITIES)
                degrees = rng.randint(-5, 35)
                call = {"name": "get_weather", "arguments": {"city": city}}
                result = json.dumps({"city": city, "celsius": degrees})
                question = f"What is the weather in {city}?"
                answer = f"It is {degrees} degrees in {city}."
            out.append(
                [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": "", "tool_calls": [_call(call)]},
                    {"role": "tool", "content": result},
                    {"role": "assistant", "content": answer},
                ]
            )
    return out


def _call(call: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
