"""Target-sentence generation: parsing replies, the disk cache, the OpenAI-compatible client, leakage."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmark import generation
from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.generation import cached, parse_qa_pairs
from benchmark.targets import check_no_leakage, make_targets
from benchmark.types import QA, Document

DOCS = [
    Document(
        "d0",
        "Douprur is a town. It was founded by Drexrain Lintrim in 1526.",
        (QA("Who founded Douprur?", ("Drexrain Lintrim",)),),
    ),
    Document(
        "d1",
        "Fistear is a person. Fistear worked as a botanist.",
        (QA("What was the profession of Fistear?", ("botanist",)),),
    ),
]

GPT_STYLE = (  # the official code strips newlines from gpt-4o-mini's bulleted reply
    "- Question: Who founded Douprur? Answer: Drexrain Lintrim.- Question: In which year was Douprur "
    "founded? Answer: 1526.- Question: What kind of place is Douprur? Answer: A town."
)
SMALL_MODEL_STYLE = """Sure! Here are some questions about the context:

1. **Question:** Who established the town of Douprur?
   **Answer:** Drexrain Lintrim

2. **Question:** When was it founded?
   **Answer:** In 1526.

3. Question: What is Douprur? Answer: a town
Question: Which questions have no answer?
I hope these help!"""


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFPARAM_BENCH_CACHE", str(tmp_path / "cache"))


def test_parses_the_official_run_together_style():
    assert parse_qa_pairs(GPT_STYLE) == [
        "Question: Who founded Douprur? Answer: Drexrain Lintrim.",
        "Question: In which year was Douprur founded? Answer: 1526.",
        "Question: What kind of place is Douprur? Answer: A town.",
    ]


def test_parses_numbered_bold_multiline_replies_and_skips_unanswered_questions():
    assert parse_qa_pairs(SMALL_MODEL_STYLE) == [
        "Question: Who established the town of Douprur? Answer: Drexrain Lintrim",
        "Question: When was it founded? Answer: In 1526.",
        "Question: What is Douprur? Answer: a town",
    ]
    assert parse_qa_pairs("I cannot help with that.") == []
    assert parse_qa_pairs("Question: Repeated? Answer: yes\nQuestion: Repeated? Answer: yes") == [
        "Question: Repeated? Answer: yes"
    ]


def test_cache_hit_path_and_key():
    calls: list[list[str]] = []

    def make(docs):
        calls.append([d.id for d in docs])
        return {d.id: [f"Question: q{len(calls)} {d.id}? Answer: a"] for d in docs}

    first = cached(DOCS, "gen-x", 5, 0, make)
    again = cached(DOCS, "gen-x", 5, 0, make)
    assert again == first and calls == [["d0", "d1"]]  # the second call read the cache only
    cached(DOCS[:1], "gen-x", 5, 1, make)  # another seed
    cached(DOCS[:1], "gen-x", 6, 0, make)  # another count
    cached(DOCS[:1], "gen-y", 5, 0, make)  # another generator
    edited = Document("d0", DOCS[0].text + " It has a river.", DOCS[0].probes)
    cached([edited], "gen-x", 5, 0, make)  # another context text, same id
    assert len(calls) == 5
    path = generation.cache_path("gen-x", DOCS[0].text, 5, 0)
    stored = json.loads(path.read_text())
    assert stored["sentences"] == first["d0"] and stored["count"] == 5 and stored["seed"] == 0


def test_a_generator_that_finds_nothing_is_an_error():
    with pytest.raises(BenchError, match="no usable QA pair"):
        cached(DOCS[:1], "gen-z", 5, 0, lambda docs: {})


class FakeLM:
    """Stands in for the instruct model: replies with canned text and records the prompts."""

    name = "fake-instruct"

    def __init__(self, tokenizer, replies):
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.prompts: list[str] = []

    def generate(self, prompts, **kwargs):
        assert kwargs["sample_temperature"] == 1.0 and kwargs["stop_at_newline"] is False
        self.prompts.extend(prompts)
        return [self.replies.pop(0) for _ in prompts]


def test_local_generator_prompts_in_the_official_style_and_asks_again_until_it_has_enough(tiny_lm):
    replies = [
        SMALL_MODEL_STYLE,
        "Question: Who was Fistear? Answer: a person",
        "Question: What work did Fistear do? Answer: botany",
    ]
    lm = FakeLM(tiny_lm.tokenizer, replies)
    result = generation.local_targets(DOCS, 2, 0, lm)
    assert len(result["d0"]) == 2 and len(result["d1"]) == 2
    assert len(lm.prompts) == 3  # d1 needed a second round
    assert "generate related questions as comprehensively as possible" in lm.prompts[0]
    assert DOCS[0].text in lm.prompts[0] and "<|im_start|>user" in lm.prompts[0]
    again = generation.local_targets(DOCS, 2, 0, FakeLM(tiny_lm.tokenizer, []))  # cache: no generation
    assert again == result


class Endpoint(BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if type(self).status != 200:
            payload = {"error": {"message": "model not found"}}
        else:
            context = body["messages"][1]["content"].split("\n", 1)[1]
            name = context.split()[0]
            payload = {
                "choices": [
                    {
                        "message": {
                            "role": "assistant",
                            "content": f"- Question: What is {name}? Answer: something\n"
                            f"- Question: Who knows {name}? Answer: nobody",
                        }
                    }
                ]
            }
        data = json.dumps(payload).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint(monkeypatch):
    Endpoint.requests = []
    Endpoint.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("SELFPARAM_BENCH_OPENAI_MODEL", "tiny-gpt")
    yield Endpoint
    server.shutdown()
    server.server_close()


def test_openai_generator_against_a_loopback_server(endpoint):
    result = make_targets(DOCS, RunParams(targets="openai", num_targets=2), None, 0)
    assert result == {
        "d0": ["Question: What is Douprur? Answer: something", "Question: Who knows Douprur? Answer: nobody"],
        "d1": ["Question: What is Fistear? Answer: something", "Question: Who knows Fistear? Answer: nobody"],
    }
    assert len(endpoint.requests) == 2
    request = endpoint.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer test-key"
    assert request["model"] == "tiny-gpt" and request["temperature"] == 1.0
    assert request["messages"][0]["role"] == "system"
    assert "with bullet points and answers" in request["messages"][0]["content"]
    make_targets(DOCS, RunParams(targets="openai", num_targets=2), None, 0)
    assert len(endpoint.requests) == 2  # served from the cache


def test_openai_client_errors_are_one_line(endpoint, monkeypatch):
    endpoint.status = 404
    with pytest.raises(BenchError, match="HTTP 404"):
        make_targets(DOCS[:1], RunParams(targets="openai", num_targets=2), None, 0)
    assert len(endpoint.requests) == 1  # a client error is not retried
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(BenchError, match="OPENAI_API_KEY"):
        make_targets(DOCS[:1], RunParams(targets="openai", num_targets=2), None, 0)


def test_leakage_check_fails_loudly_on_a_probe_question():
    clean = {"d0": ["Question: Which person established Douprur? Answer: Drexrain Lintrim"]}
    check_no_leakage(DOCS, clean)
    leaked = {"d1": ["Question: who founded Douprur Answer: Drexrain Lintrim"]}  # d0's probe, re-cased
    with pytest.raises(BenchError, match="leakage.*'Who founded Douprur\\?'.*'d0'"):
        check_no_leakage(DOCS, leaked)


def test_bench_generate_with_the_dataset_generator(bench, tmp_path):
    out = tmp_path / "targets.jsonl"
    code, stdout, err = bench("generate", "--generator", "dataset", "--num-contexts", "3", "--count", "4", "--out", out)
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and all(len(line["sentences"]) == 4 for line in lines)
    assert "no probe question among them" in stdout
    code, _, err = bench("generate", "--generator", "nope", "--num-contexts", "1")
    assert code == 2 and "unknown target-sentence generator" in err
