"""SQuAD and PwC loaders: parsing, filters, splits, malformed files, hub fallback, shared copies."""

import json

import pytest

from benchmark.errors import BenchError
from benchmark.metrics import normalize_answer
from benchmark.targets import check_no_leakage, dataset_targets
from tasks.data import public
from tasks.data.public import answer_tokens
from tasks.qa import load_documents

LONG = "a rather long answer of many words"  # 7 tokens: filtered out


def load_whole(dataset, path, limit):
    """Every context in file order: what parsing makes of the file, before any split or sampling."""
    return load_documents(dataset, path, limit, 0, split="all", sample="first")


def squad_file(tmp_path, data=None):
    data = data or {
        "data": [
            {
                "title": "Alpha",
                "paragraphs": [
                    {
                        "context": "Alpha is a city. It has a river.",
                        "qas": [
                            {
                                "id": "1",
                                "question": "What is Alpha?",
                                "answers": [{"text": "a city"}, {"text": "city"}],
                            },
                            {"id": "2", "question": "What does Alpha have?", "answers": [{"text": "a river"}]},
                            {"id": "3", "question": "Why?", "answers": [{"text": LONG}]},
                            {"id": "4", "question": "What is  Alpha?", "answers": [{"text": "a town"}]},  # repeat of 1
                            {
                                "id": "5",
                                "question": "Where is the river?",
                                "answers": [{"text": LONG}, {"text": "in Alpha"}],
                            },
                        ],
                    },
                    {
                        "context": "Only one question here.",
                        "qas": [{"id": "6", "question": "How many questions?", "answers": [{"text": "one"}]}],
                    },
                ],
            },
            {
                "title": "Beta",
                "paragraphs": [
                    {
                        "context": "Beta was built in 1900 by Ann.",
                        "qas": [
                            {"id": "7", "question": "When was Beta built?", "answers": [{"text": "1900"}]},
                            {"id": "8", "question": "Who built Beta?", "answers": [{"text": "Ann"}]},
                        ],
                    },
                ],
            },
        ]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def pwc_file(tmp_path, rows, name="pwc.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PWC_ROWS = [
    {"input": "<s>Story one about Ada.", "prompt": "Who is the story about?", "answer": "Ada"},
    {"input": "Story two about Bob.", "prompt": "Write a title for the above text.", "answer": "Bob"},
    {"input": "Story two about Bob.", "prompt": "Who is it about?", "answer": "Bob"},
    {"input": "Story one about Ada.", "prompt": "Summarise it.", "answer": LONG},
    {"input": "Story one about Ada.", "prompt": "What is the story?", "answer": "one"},
    {"input": "Story three, all long.", "prompt": "Explain.", "answer": LONG},
    {"input": "Story four about Cy.", "prompt": "Who?", "answer": "Cy"},
]


def test_answer_tokens_counts_words_and_punctuation():
    assert answer_tokens("Santa Clara, California") == 4
    assert answer_tokens(LONG) == 7
    assert answer_tokens("$137 billion") == 3


def test_answers_that_normalise_to_nothing_are_dropped():
    # SQuAD ships "." as a gold answer: an empty reply would score F1 and EM 1 against it
    assert public.short_answers([".", "  ", "the", "Denver Broncos", "Denver Broncos"]) == ("Denver Broncos",)
    assert public.short_answers(["."]) == ()


def test_squad_split_by_default(tmp_path):
    docs = load_whole("squad", str(squad_file(tmp_path)), None)
    # the one-question paragraph cannot give both a probe and a training question
    assert [d.id for d in docs] == ["squad-000-000", "squad-001-000"]
    alpha = docs[0]
    assert [qa.question for qa in alpha.probes] == ["What is Alpha?", "Where is the river?"]
    assert [qa.question for qa in alpha.train_qa] == ["What does Alpha have?"]
    assert alpha.probes[0].answers == ("a city", "city", "a town")  # repeats merged
    assert alpha.probes[1].answers == ("in Alpha",)  # long answers dropped
    assert alpha.source.endswith("squad.json: data[0].paragraphs[0]")
    probes = {normalize_answer(qa.question) for d in docs for qa in d.probes}
    assert not probes & {normalize_answer(qa.question) for d in docs for qa in d.train_qa}
    check_no_leakage(docs, dataset_targets(docs, 0, 0))


def test_squad_all_keeps_every_question_as_probe(tmp_path):
    docs = load_whole("squad-all", str(squad_file(tmp_path)), None)
    assert [d.id for d in docs] == ["squad-000-000", "squad-000-001", "squad-001-000"]
    assert [len(d.probes) for d in docs] == [3, 1, 2] and all(not d.train_qa for d in docs)
    assert load_whole("squad-all", str(squad_file(tmp_path)), 2) == docs[:2]  # first N, in order


def test_squad_training_question_asked_elsewhere_is_dropped(tmp_path):
    data = {
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "One.",
                        "qas": [
                            {"question": "Q1?", "answers": [{"text": "aa"}]},
                            {"question": "Shared?", "answers": [{"text": "b"}]},
                            {"question": "Q3?", "answers": [{"text": "c"}]},
                            {"question": "Q4?", "answers": [{"text": "d"}]},
                        ],
                    },
                    {
                        "context": "Two.",
                        "qas": [
                            {"question": "Shared?", "answers": [{"text": "e"}]},
                            {"question": "Q6?", "answers": [{"text": "f"}]},
                        ],
                    },
                ],
            }
        ]
    }
    docs = load_whole("squad", str(squad_file(tmp_path, data)), None)
    assert [qa.question for qa in docs[0].train_qa] == ["Q4?"]  # "Shared?" is a probe of paragraph 2
    check_no_leakage(docs, dataset_targets(docs, 0, 0))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("data"), ": field 'data' is missing or not a list"),
        (lambda d: d["data"][1]["paragraphs"][0].pop("context"), "data[1].paragraphs[0]: field 'context'"),
        (
            lambda d: d["data"][0]["paragraphs"][1]["qas"][0].update(question=7),
            "data[0].paragraphs[1].qas[0]: field 'question'",
        ),
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][2].update(answers=[{"start": 1}]),
            "data[0].paragraphs[0].qas[2].answers[0]: field 'text'",
        ),
    ],
)
def test_squad_malformed_structure_is_located(tmp_path, mutate, message):
    path = squad_file(tmp_path)
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BenchError, match=None) as err:
        load_documents("squad", str(path), None, 0)
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_squad_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n {"title": "x",\n  "paragraphs": [}\n]}\n')
    with pytest.raises(BenchError) as err:
        load_documents("squad", str(path), None, 0)
    assert str(err.value).startswith(f"{path}:3:") and "malformed JSON" in str(err.value)


def test_pwc_filters_groups_and_keeps_order(tmp_path):
    path = pwc_file(tmp_path, PWC_ROWS)
    docs = load_whole("pwc", str(path), None)
    # the all-long context vanishes; ids follow the file's context order, sources its lines
    assert [d.id for d in docs] == ["pwc-00000", "pwc-00001", "pwc-00003"]
    assert [d.text for d in docs] == ["Story one about Ada.", "Story two about Bob.", "Story four about Cy."]
    assert [d.source for d in docs] == [f"{path}:1", f"{path}:2", f"{path}:7"]
    assert [[qa.question for qa in d.probes] for d in docs] == [
        ["Who is the story about?", "What is the story?"],
        ["Who is it about?"],
        ["Who?"],
    ]
    assert all("above text" not in qa.question for d in docs for qa in d.probes)
    assert all(not d.train_qa for d in docs)
    assert load_whole("pwc", str(path), 2) == docs[:2]


def test_pwc_split_needs_two_questions(tmp_path):
    docs = load_whole("pwc-split", str(pwc_file(tmp_path, PWC_ROWS)), None)
    assert [d.id for d in docs] == ["pwc-00000"]
    assert [qa.question for qa in docs[0].probes] == ["Who is the story about?"]
    assert [qa.question for qa in docs[0].train_qa] == ["What is the story?"]


def test_pwc_folder_reads_files_in_name_order(tmp_path):
    pwc_file(tmp_path, PWC_ROWS[4:5], "b.jsonl")
    pwc_file(tmp_path, PWC_ROWS[6:7], "a.jsonl")
    (tmp_path / "notes.txt").write_text("ignored")
    docs = load_whole("pwc", str(tmp_path), None)
    assert [d.text for d in docs] == ["Story four about Cy.", "Story one about Ada."]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"input": "x", "prompt": "q?"', "malformed JSON"),
        ('{"input": "x", "answer": "a"}', "field 'prompt' is missing or not a string"),
        ('{"input": "  ", "prompt": "q?", "answer": "a"}', "field 'input' is empty"),
        ('["input", "prompt"]', "expected a JSON object per line"),
    ],
)
def test_pwc_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(PWC_ROWS[0])
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(BenchError) as err:
        load_documents("pwc", str(path), 1, 0)  # even past the contexts asked for
    assert str(err.value).startswith(f"{path}:3: ") and message in str(err.value)


def test_missing_data_path_is_an_error(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_documents("squad", str(tmp_path / "nope.json"), None, 0)
    with pytest.raises(BenchError, match="holds no \\*.jsonl file"):
        load_documents("pwc", str(tmp_path), None, 0)


def test_hub_used_only_without_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFPARAM_BENCH_DATA", str(tmp_path / "empty"))
    asked = []

    def fake_hub(datasets, repo, split):
        asked.append((repo, split))
        return [
            {
                "id": "1",
                "title": "Alpha",
                "context": "Alpha is a city.",
                "question": "What is Alpha?",
                "answers": {"text": ["a city"], "answer_start": [9]},
            },
            {
                "id": "2",
                "title": "Alpha",
                "context": "Alpha is a city.",
                "question": "Is it big?",
                "answers": {"text": ["no"], "answer_start": [0]},
            },
            {
                "id": "3",
                "title": "Beta",
                "context": "Beta is a lake.",
                "question": "What is Beta?",
                "answers": {"text": [LONG, "a lake"], "answer_start": [0, 9]},
            },
        ]

    monkeypatch.setattr(public, "hub_loader", fake_hub)
    docs = load_whole("squad-all", "", None)
    assert asked == [("rajpurkar/squad", "validation")]
    assert [(d.id, len(d.probes)) for d in docs] == [("squad-000-000", 2), ("squad-001-000", 1)]
    assert docs[1].probes[0].answers == ("a lake",)
    assert docs[0].source == "rajpurkar/squad/validation#0"


def test_hub_failure_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFPARAM_BENCH_DATA", str(tmp_path / "empty"))

    def offline(datasets, repo, split):
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (OfflineModeIsEnabled)\nmore detail")

    monkeypatch.setattr(public, "hub_loader", offline)
    for name, repo in (("squad", "rajpurkar/squad"), ("pwc", "sggetao/PwC")):
        with pytest.raises(BenchError) as err:
            load_documents(name, "", 3, 0)
        text = str(err.value)
        assert "\n" not in text and repo in text and "no local copy" in text and "data_path" in text


def test_shared_squad_copy(shared_data):
    if not (shared_data / "squad" / "dev-v1.1.part_a.json").is_file():
        pytest.skip("shared SQuAD copy is absent")
    docs = load_whole("squad", "", None)
    assert len(docs) > 800
    assert docs[0].text.startswith("Super Bowl 50 was an American football game")
    assert all(answer_tokens(a) <= 5 for d in docs for qa in d.probes + d.train_qa for a in qa.answers)
    assert all(d.probes and d.train_qa for d in docs)
    check_no_leakage(docs, dataset_targets(docs, 0, 0))
    assert len(load_whole("squad-all", "", None)) >= len(docs)


def test_shared_pwc_copy(shared_data):
    if not (shared_data / "pwc" / "PWC_eval_data.jsonl").is_file():
        pytest.skip("shared PwC copy is absent")
    docs = load_whole("pwc", "", None)
    assert 1 <= len(docs) <= 25  # a small sample: 19 + 6 rows, few with short answers
    assert docs[0].probes[0].answers == ("Benoit Quennedey",)
    assert all("above text" not in qa.question.lower() for d in docs for qa in d.probes)
    assert all(answer_tokens(a) <= 5 for d in docs for qa in d.probes for a in qa.answers)
