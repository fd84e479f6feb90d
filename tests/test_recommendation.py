"""The recommendation task: list parsing, title matching, r1-r4 filters, Recall@k, loaders, runs."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest

from benchmark.errors import BenchError
from benchmark.registry import register_method
from benchmark.runner import RunRequest, run
from benchmark.types import Prompt
from methods.base import Method
from methods.sentences import SentenceParams, frame, sentence_prefixes
from tasks.crs_scoring import TitleMatcher, clean_item, filtered, parse_recommendations, recall_at_k, score_list
from tasks.data.crs import entity_title, parse_dialog
from tasks.data.inspired import Inspired
from tasks.data.redial import ReDial
from tasks.recommendation import (
    RECOMMENDER_PROMPT,
    RecommendationTask,
    build_question,
    probe_asker,
    recommendation_qa,
    select_evenly,
    select_probes,
)

# ---- the list parser ---------------------------------------------------------------------------

# A model reply kept verbatim, long first line included.
MISTRAL_REPLY = """Based on your preference for comedy, drama, and documentaries, and your recent viewing of "Hustlers" (a drama film), here are 20 movie recommendations:

1. The Grand Budapest Hotel (Comedy, Drama)
2. The Intouchables (2011) - Comedy, Drama
3. The Queen of Versailles (Documentary)
4. **The Big Sick** (2017): A romantic comedy based on real-life experiences.
5. "The Imitation Game" (2014)
6) Spider-Man: Into the Spider-Verse

These recommendations offer a mix of comedy, drama, and documentaries."""  # noqa: E501


def _titles(text: str) -> list[str]:
    return [item.title for item in parse_recommendations(text)]


def test_parser_reads_numbered_list_and_ignores_chatter():
    assert _titles(MISTRAL_REPLY) == [
        "The Grand Budapest Hotel",
        "The Intouchables",
        "The Queen of Versailles",
        "The Big Sick",
        "The Imitation Game",
        "Spider-Man: Into the Spider-Verse",
    ]


def test_parser_reads_bullets_comma_lists_and_nothing():
    assert _titles("Sure!\n- Inception (2010)\n* Titanic\n• Heat – a crime epic") == [
        "Inception",
        "Titanic",
        "Heat",
    ]
    assert _titles("Here are some movies:\nInception, Titanic; The Matrix.") == [
        "Inception",
        "Titanic",
        "The Matrix",
    ]
    assert _titles("") == []
    assert _titles("\n\n  \n") == []
    # a small model that keeps the dialog going: every line is kept, to be mapped (and mostly filtered)
    assert _titles("System: Have you seen Heat?\nUser: no") == ["System: Have you seen Heat?", "User: no"]


def test_clean_item_keeps_titles_with_dashes_colons_and_numbers():
    assert clean_item("3. X-Men (2000)") == "X-Men"
    assert clean_item("7. 2001: A Space Odyssey") == "2001: A Space Odyssey"
    assert clean_item("**1.** Up") == "Up"


def test_clean_item_reads_an_emphasised_title_before_a_colon():
    assert clean_item("1. **The Matrix**: A hacker learns the truth") == "The Matrix"
    assert clean_item("2. *Heat*: A heist goes wrong") == "Heat"
    assert clean_item("**3. Alien**: In space no one can hear you scream") == "Alien"
    assert clean_item("4. __Titanic__: The ship") == "Titanic"


# Real ReDial titles that a description cut or a final-period strip damages, beside the titles
# that the damaged forms are nearest to.
REAL_TITLES = [
    "Mission: Impossible – Ghost Protocol",
    "Mission: Impossible",
    "John Q.",
    "John 5",
    "When Harry Met Sally...",
    "Heat",
    "The Matrix",
]


def test_cleaning_does_not_break_real_catalogue_titles():
    matcher = TitleMatcher(REAL_TITLES)
    reply = (
        "1. Mission: Impossible – Ghost Protocol\n2. John Q.\n3. When Harry Met Sally...\n"
        '4. "John Q." (2002) - A father takes a hospital hostage\n5. **When Harry Met Sally...**: Friends fall in love'
    )
    assert matcher.match(parse_recommendations(reply)) == [
        ("mission: impossible – ghost protocol", 0),
        ("john q.", 0),
        ("when harry met sally...", 0),
        ("john q.", 0),
        ("when harry met sally...", 0),
    ]


def test_descriptions_and_periods_are_still_cut_where_that_is_nearer():
    matcher = TitleMatcher(REAL_TITLES)
    reply = "1. Heat – a crime epic\n2. Mission: Impossible - The first film\n3. The Matrix.\n4. *Heat*: a heist"
    assert _titles(reply) == ["Heat", "Mission: Impossible", "The Matrix", "Heat"]
    assert matcher.match(parse_recommendations(reply)) == [
        ("heat", 0),
        ("mission: impossible", 0),
        ("the matrix", 0),
        ("heat", 0),
    ]


# Titles with commas in them, beside decoys that their comma pieces are nearest to.
COMMA_TITLES = [
    "Crouching Tiger, Hidden Dragon",
    "Crouching Tiger, Hidden Dragon: Sword of Destiny",
    "Hidden Dragon Returns",
    "Sex, Lies, and Videotape",
    "Videotape",
    "Toy Story",
    "Up",
    "Heat",
]


def _read(matcher: TitleMatcher, text: str) -> list[tuple[str, str, int]]:
    items = matcher.joined(parse_recommendations(text))
    return [(item.title, *found) for item, found in zip(items, matcher.match(items))]


def test_free_text_comma_pieces_join_back_into_a_catalogue_title():
    matcher = TitleMatcher(COMMA_TITLES)
    assert _titles("Crouching Tiger, Hidden Dragon") == ["Crouching Tiger", "Hidden Dragon"]  # the parser alone
    assert _read(matcher, "Try Crouching Tiger, Hidden Dragon.\nHeat, Up") == [
        ("Try Crouching Tiger", "toy story", 15),  # with the lead-in, the run is no title: kept apart
        ("Hidden Dragon", "hidden dragon returns", 8),
        ("Heat", "heat", 0),
        ("Up", "up", 0),
    ]
    assert _read(matcher, "Heat, Crouching Tiger, Hidden Dragon, Up; Sex, Lies, and Videotape") == [
        ("Heat", "heat", 0),
        ("Crouching Tiger, Hidden Dragon", "crouching tiger, hidden dragon", 0),
        ("Up", "up", 0),
        ("Sex, Lies, and Videotape", "sex, lies, and videotape", 0),  # three commas, one title
    ]
    # the text between the pieces is kept as written, and a near miss still joins
    assert _read(matcher, "Crouching Tigr; Hidden Dragon") == [
        ("Crouching Tigr; Hidden Dragon", "crouching tiger, hidden dragon", 2)
    ]


def test_two_catalogue_titles_separated_by_a_comma_stay_two():
    matcher = TitleMatcher(COMMA_TITLES)
    assert _read(matcher, "Toy Story, Up") == [("Toy Story", "toy story", 0), ("Up", "up", 0)]
    # a title before a comma title stays alone, and the comma title after it joins whole
    assert _read(matcher, "Up, Sex, Lies, and Videotape") == [
        ("Up", "up", 0),
        ("Sex, Lies, and Videotape", "sex, lies, and videotape", 0),
    ]


def test_numbered_and_bulleted_lines_are_never_joined():
    matcher = TitleMatcher(COMMA_TITLES)
    for reply in ("1. Crouching Tiger\n2. Hidden Dragon", "- Crouching Tiger\n- Hidden Dragon"):
        items = parse_recommendations(reply)
        assert matcher.joined(items) == items
        assert [found[1] for found in matcher.match(items)] == [12, 8]
    assert _read(matcher, "1. Crouching Tiger, Hidden Dragon\n2. Toy Story, Up") == [
        ("Crouching Tiger, Hidden Dragon", "crouching tiger, hidden dragon", 0),
        ("Toy Story, Up", "toy story", 4),
    ]


def test_recommendation_records_and_recall_see_the_joined_title():
    from types import SimpleNamespace

    from tasks.data.crs import RecProbe

    titles = dict(enumerate(COMMA_TITLES))
    task = RecommendationTask.__new__(RecommendationTask)  # score_replies needs only these
    task.params, task.dropped_turns = RecommendationTask.Params(), {}
    task.catalogue = SimpleNamespace(titles=titles)
    task.matcher = TitleMatcher(COMMA_TITLES)
    probe = RecProbe("p", "d", "", gold=(0,), seen=(7,))
    [record] = task.score_replies([probe], ["Heat, Crouching Tiger, Hidden Dragon"])
    assert record["items"] == ["Heat", "Crouching Tiger, Hidden Dragon"]
    assert record["matches"] == [["heat", 0], ["crouching tiger, hidden dragon", 0]]
    assert record["hits"]["r1"] == {"1": [0], "5": [1], "10": [1]}
    assert record["hits"]["r2"] == {"1": [1], "5": [1], "10": [1]}


# ---- edit-distance mapping ---------------------------------------------------------------------

CATALOGUE = ["Inception", "Titanic", "The Matrix", "Heat", "Aliens", "Alien"]


def test_matcher_maps_to_nearest_lowercased_title():
    matcher = TitleMatcher(CATALOGUE, chunk=2)  # several cdist blocks
    found = matcher.match(["INCEPTION", "Titanik", "the matrx", "Alienz", "a long sentence about nothing"])
    assert found[:4] == [("inception", 0), ("titanic", 1), ("the matrix", 1), ("alien", 1)]
    assert found[4][1] > 2 and found[4][0] in matcher.choices
    assert matcher.match(["titanik"]) == [("titanic", 1)]  # cached, same answer


def test_matcher_breaks_ties_by_sorted_order_and_is_stable():
    matcher = TitleMatcher(["Bat", "Cat"])
    assert matcher.match(["Hat"]) == [("bat", 1)]  # equally near: the first in sorted order
    assert TitleMatcher(["Cat", "Bat"]).match(["Hat"]) == [("bat", 1)]


# ---- the four filters and Recall@k -------------------------------------------------------------

# A list where each filter puts a different title first: A far and seen, B far, C seen, D neither.
HAND_MATCHES = [("a", 5), ("b", 4), ("c", 1), ("d", 0)]
HAND_SEEN = {"a", "c"}


def test_each_filter_ranks_differently():
    assert filtered(HAND_MATCHES, HAND_SEEN, "r1") == ["a", "b", "c", "d"]
    assert filtered(HAND_MATCHES, HAND_SEEN, "r2") == ["b", "d"]
    assert filtered(HAND_MATCHES, HAND_SEEN, "r3") == ["c", "d"]
    assert filtered(HAND_MATCHES, HAND_SEEN, "r4") == ["d"]
    hits = score_list(HAND_MATCHES, ["A", "B", "C", "D"], ["A", "C"])
    assert hits["r1"]["1"] == [1, 0, 0, 0]
    assert hits["r2"]["1"] == [0, 1, 0, 0]
    assert hits["r3"]["1"] == [0, 0, 1, 0]
    assert hits["r4"]["1"] == [0, 0, 0, 1]
    assert hits["r1"]["5"] == [1, 1, 1, 1]
    assert hits["r4"]["5"] == [0, 0, 0, 1]  # seen and far titles are gone, not just demoted


def test_distance_limit_is_inclusive_and_configurable():
    assert filtered([("x", 2), ("y", 3)], set(), "r3") == ["x"]
    assert filtered([("x", 2), ("y", 3)], set(), "r3", max_distance=3) == ["x", "y"]


def test_recall_at_k_arithmetic_and_per_gold_averaging():
    ranked = ["t1", "t2", "t3", "gold", "t5", "t6"]
    assert [recall_at_k(ranked, "gold", k) for k in (1, 3, 4, 5, 10)] == [0, 0, 1, 1, 1]
    task = RecommendationTask.__new__(RecommendationTask)  # aggregate needs only params and seed
    task.params, task.seed = RecommendationTask.Params(), 0

    def prediction(r1_at1: list[int], lines: int, near: int) -> dict:
        hits = {name: {k: list(r1_at1) for k in ("1", "5", "10")} for name in ("r1", "r2", "r3", "r4")}
        return {"hits": hits, "items": ["x"] * lines, "matches": [["x", 0]] * near + [["y", 9]] * (lines - near)}

    records = [{"predictions": [prediction([1, 0], 4, 1)]}, {"predictions": [prediction([1], 2, 2)]}]
    scores = task.aggregate(records)
    assert scores["recall@1_r1"]["n"] == 3  # once per gold item, not per probe
    assert scores["recall@1_r1"]["mean"] == pytest.approx(2 / 3)
    assert scores["list_length"]["mean"] == pytest.approx(3.0)
    assert scores["in_catalogue"]["mean"] == pytest.approx((0.25 + 1.0) / 2)
    text = RecommendationTask.summary(scores)
    assert "r4: both" in text and "0.6667" in text


def test_recall_intervals_draw_whole_test_points_not_gold_items():
    task = RecommendationTask.__new__(RecommendationTask)
    task.params, task.seed = RecommendationTask.Params(), 0

    def prediction(hits_at1: list[int]) -> dict:
        hits = {name: {k: list(hits_at1) for k in ("1", "5", "10")} for name in ("r1", "r2", "r3", "r4")}
        return {"hits": hits, "items": ["x"], "matches": [["x", 0]]}

    # one reply names all eight of its gold items, the other misses its one: two test points
    scores = task.aggregate([{"predictions": [prediction([1] * 8)]}, {"predictions": [prediction([0])]}])
    recall = scores["recall@1_r1"]
    assert recall["mean"] == pytest.approx(8 / 9) and recall["n"] == 9
    # drawing the missed point twice (p = 1/4) gives 0 and the other twice 1; nine independent gold
    # items would almost never all be the missed one
    assert recall["ci_low"] == 0.0 and recall["ci_high"] == 1.0


# ---- loaders on fixture files ------------------------------------------------------------------

REDIAL_LINE = {
    "conversationId": "777",
    "initiatorWorkerId": 1,
    "respondentWorkerId": 2,
    "movieMentions": {"111": "Alien  (1979)", "333": "Predator (1987)"},
    "messages": [
        {"text": "hi, I loved @111", "senderWorkerId": 1},
        {"text": "any ideas?", "senderWorkerId": 1},
        {"text": "Have you seen @222 ?", "senderWorkerId": 2},
        {"text": "yes, great", "senderWorkerId": 1},
        {"text": "Then try @333 and @999", "senderWorkerId": 2},
    ],
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_movies(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["movieId", "movieName", "nbMentions"])
        writer.writerow(["111", "Alien (1979)", 10])
        writer.writerow(["222", "Aliens  (1986)", 5])
    return path


def test_redial_loader_replaces_mentions_and_merges_turns(tmp_path):
    train = write_jsonl(tmp_path / "redial" / "train_subset500.jsonl", [REDIAL_LINE])
    write_movies(tmp_path / "redial" / "movies_with_mentions.csv")
    (conv,) = ReDial(path=str(train)).conversations()
    assert conv.id == "redial-777"
    assert conv.text() == (
        "User: hi, I loved Alien (1979) any ideas?\n"
        "System: Have you seen Aliens (1986) ?\n"
        "User: yes, great\n"
        "System: Then try Predator (1987) and @999"  # 333 only in the line's own mentions; 999 unknown
    )
    assert [t.movies for t in conv.turns] == [("Alien (1979)",), ("Aliens (1986)",), (), ("Predator (1987)",)]


def test_redial_loader_reads_the_official_zip(tmp_path):
    archive = tmp_path / "redial_dataset.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("train_data.jsonl", json.dumps(REDIAL_LINE) + "\n")
        z.writestr("movies_with_mentions.csv", "movieId,movieName,nbMentions\n222,Aliens (1986),5\n")
    (conv,) = ReDial(path=str(archive)).conversations()
    assert "Have you seen Aliens (1986) ?" in conv.text()


def test_redial_loader_names_bad_lines(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps(REDIAL_LINE) + "\n{not json\n")
    with pytest.raises(BenchError, match=r"train.jsonl:2: malformed JSON"):
        ReDial(path=str(bad)).conversations()
    stranger = dict(REDIAL_LINE, messages=[{"text": "hi", "senderWorkerId": 9}])
    write_jsonl(bad, [stranger])
    with pytest.raises(BenchError, match="neither participant"):
        ReDial(path=str(bad)).conversations()


INSPIRED_DIALOG = [
    {"text": "Hi! What do you like?", "role": "RECOMMENDER", "movie": [], "movie_name": []},
    {"text": "I liked Joker", "role": "SEEKER", "movie": ["Joker (2019)"], "movie_name": ["Joker"]},
    {"text": "Try Knives Out.", "role": "RECOMMENDER", "movie": ["Knives Out (2019)"], "movie_name": ["Knives Out"]},
    {"text": "It is great!", "role": "RECOMMENDER", "movie": [], "movie_name": []},
]


def test_inspired_loader_unicrs_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [INSPIRED_DIALOG])
    (conv,) = Inspired(path=str(path)).conversations()
    assert conv.text() == "System: Hi! What do you like?\nUser: I liked Joker\nSystem: Try Knives Out. It is great!"
    assert conv.turns[2].movies == ("Knives Out (2019)",)


def test_inspired_loader_original_tsv(tmp_path):
    path = tmp_path / "train.tsv"
    rows = [
        ["dialog_id", "utt_id", "speaker", "text", "movies"],
        ["d1", "1", "RECOMMENDER", "Hello, what do you like?", ""],
        ["d1", "2", "SEEKER", "I saw QUOTATION_MARKJokerQUOTATION_MARK", "Joker (2019)"],
        ["d1", "3", "RECOMMENDER", "See Heat or Ronin", "Heat (1995); Ronin (1998)"],
        ["d2", "1", "SEEKER", "Hi", ""],
    ]
    path.write_text("".join("\t".join(r) + "\n" for r in rows))
    first, second = Inspired(path=str(path)).conversations()
    assert first.id == "inspired-d1" and second.id == "inspired-d2"
    assert 'User: I saw "Joker"' in first.text()
    assert first.turns[2].movies == ("Heat (1995)", "Ronin (1998)")


def test_entity_titles_follow_the_papers_naming():
    assert entity_title("<http://dbpedia.org/resource/Police_Academy_(1984_film)>") == "Police Academy"
    assert entity_title("<http://dbpedia.org/resource/Spider-Man_2>") == "Spider Man 2"
    assert [(t.speaker, t.text) for t in parse_dialog("\nUser: hi there\nSystem: hello\nUser: a\nb\nSystem: ")] == [
        ("User", "hi there"),
        ("System", "hello"),
        ("User", "a b"),
    ]


def test_recommendation_targets_name_new_titles_only(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [REDIAL_LINE])
    write_movies(tmp_path / "movies_with_mentions.csv")
    (conv,) = ReDial(path=str(train)).conversations()
    pairs = recommendation_qa(conv, window=2)
    assert [qa.answers for qa in pairs] == [("Aliens (1986)",), ("Predator (1987)",)]
    assert pairs[1].sentence() == (
        "Question: System: Have you seen Aliens (1986) ?\nUser: yes, great\n"
        "Which movies should the recommender suggest next? Answer: Predator (1987)"
    )


@pytest.mark.parametrize("style", ["list", "paper"])
def test_probe_form_targets_are_asked_as_the_probe_and_trained_on_its_ids(tmp_path, tiny_lm, style):
    train = write_jsonl(tmp_path / "train.jsonl", [REDIAL_LINE])
    write_movies(tmp_path / "movies_with_mentions.csv")
    (conv,) = ReDial(path=str(train)).conversations()
    pair = recommendation_qa(conv, window=2, ask=probe_asker(style))[1]
    # the test file's layout of the dialog so far: a line per turn, ending in the empty reply slot
    assert pair.question == build_question("\nSystem: Have you seen Aliens (1986) ?\nUser: yes, great\nSystem: ", style)
    assert pair.answers == ("1. Predator (1987)",)
    student = sentence_prefixes(tiny_lm, [], "chat")[1]
    framed = frame(tiny_lm, student, pair.sentence(), SentenceParams(prompt_style="chat", sentence_loss="answer"))
    probe = tiny_lm.encode(tiny_lm.format_prompt(Prompt("p", pair.question, chat=True)))  # as the probe is asked
    assert framed.ids == probe + tiny_lm.encode("1. Predator (1987)", add_bos=False)
    assert framed.start == len(probe)


def test_an_unknown_target_form_is_refused(tmp_path, oracle_method, tiny_lm):
    make_data_root(tmp_path / "data", PROBES)
    with pytest.raises(BenchError, match="target_form must be one of question, probe, not 'probes'"):
        run(request(tmp_path, target_form="probes"), lm=tiny_lm)


def test_select_evenly_spreads_over_the_file():
    assert select_evenly(list(range(10)), 3) == [0, 3, 6]
    assert select_evenly(list(range(4)), 0) == [0, 1, 2, 3]
    assert select_evenly(list(range(4)), 9) == [0, 1, 2, 3]


def test_dev_probes_are_disjoint_from_test_probes():
    probes = list(range(228))
    test, dev = select_probes(probes, 40, "test"), select_probes(probes, 40, "dev")
    assert len(dev) == 40 and len(set(dev)) == 40
    assert not set(test) & set(dev)
    assert select_probes(probes, 40) == test


@pytest.mark.parametrize("n", [0, 115])
def test_dev_split_refuses_sizes_that_leave_no_disjoint_probes(n):
    with pytest.raises(BenchError, match="split dev needs num_probes"):
        select_probes(list(range(228)), n, "dev")


def test_unknown_probe_split_is_refused():
    with pytest.raises(BenchError, match="split must be test or dev"):
        select_probes(list(range(10)), 3, "train")


# ---- a complete small data root and runs on it -------------------------------------------------

ENTITIES = {
    "Alien_(film)": 0,
    "Aliens_(film)": 1,
    "Predator_(film)": 2,
    "Heat_(1995_film)": 3,
    "Ronin_(film)": 4,
    "Science_fiction": 5,
}


def make_data_root(root: Path, probes: list[dict]) -> Path:
    crs = root / "crs" / "redial"
    write_jsonl(crs / "test.jsonl", probes)
    entity2id = {f"<http://dbpedia.org/resource/{k}>": v for k, v in ENTITIES.items()}
    (crs / "entity2id.json").write_text(json.dumps(entity2id))
    (crs / "item_ids.json").write_text(json.dumps([0, 1, 2, 3, 4]))
    write_jsonl(root / "redial" / "train_subset500.jsonl", [REDIAL_LINE, dict(REDIAL_LINE, conversationId="778")])
    write_movies(root / "redial" / "movies_with_mentions.csv")
    return root


PROBES = [
    {
        "input": "\nUser: I love Alien (1979) and science fiction\nSystem: ",
        "rec": [1],
        "prev_entity": [0, 5],
        "dialog_id": "test_1",
        "turn_id": 1,
    },
    {
        "input": "\nUser: I love Alien (1979)\nSystem: Then Aliens (1986)\nUser: more?\nSystem: ",
        "rec": [2, 3],
        "prev_entity": [0, 1],
        "dialog_id": "test_1",
        "turn_id": 3,
    },
    {
        "input": "\nUser: a heist movie please\nSystem: ",
        "rec": [3],
        "prev_entity": [],
        "dialog_id": "test_2",
        "turn_id": 1,
    },
]


@pytest.fixture
def oracle_method(registrations):
    """Answers every probe with a fixed list: the seen title first, then the gold titles."""

    answers = {
        "test_1:1": "1. Alien\n2. Aliens\n3. Predator",  # r1 @1 misses (Alien is seen), r2 @1 hits
        "test_1:3": "Sure:\n1. Predator (1987)\n2. Heet\n3. Ronin",  # Predator @1; Heat at distance 1
        "test_2:1": "1. Ronin Returns\n2. Heat",  # the first line is far from every title
    }

    @register_method("test-oracle")
    class Oracle(Method):
        injected: list = []

        def inject(self, contexts):
            Oracle.injected.append(contexts)

        def generate(self, prompts):
            assert all(p.chat and p.multiline and p.question.startswith(RECOMMENDER_PROMPT[:40]) for p in prompts)
            return [answers[p.id] for p in prompts]

    @register_method("test-oracle-targets")
    class OracleTargets(Oracle):
        uses_targets = True

    return Oracle


def request(tmp_path, method="test-oracle", **sets):
    overrides = {
        "data_path": str(tmp_path / "data"),
        "num_probes": "0",
        "probes_per_episode": "2",
        "num_conversations": "0",
        **sets,
    }
    return RunRequest(
        method=method,
        task="recommendation",
        dataset="redial",
        profile="smoke",
        out=tmp_path / "runs",
        overrides=overrides,
    )


def test_scores_end_to_end_with_a_known_answer_method(tmp_path, oracle_method, tiny_lm):
    make_data_root(tmp_path / "data", PROBES)
    outcome = run(request(tmp_path), lm=tiny_lm)
    scores = outcome.result["scores"]
    # gold items: Aliens (probe 1); Predator, Heat (probe 2); Heat (probe 3)
    assert scores["recall@1_r1"]["n"] == 4
    assert scores["recall@1_r1"]["mean"] == pytest.approx(1 / 4)  # Predator only (Heet -> Heat is 2nd)
    assert scores["recall@1_r2"]["mean"] == pytest.approx(2 / 4)  # + Aliens, once seen Alien is dropped
    assert scores["recall@1_r3"]["mean"] == pytest.approx(2 / 4)  # + Heat, once the far first line is dropped
    assert scores["recall@1_r4"]["mean"] == pytest.approx(3 / 4)
    assert scores["recall@5_r1"]["mean"] == pytest.approx(1.0)
    assert len(oracle_method.injected) == 1  # one injection serves every shard
    items = [i for e in outcome.result["episodes"] for p in e["predictions"] for i in p["items"]]
    assert items and all(type(i) is str for i in items)  # records hold the cleaned titles as text
    assert [e["episode"] for e in outcome.result["episodes"]] == ["probes-0000", "probes-0002"]
    contexts = oracle_method.injected[0]
    assert [c.id for c in contexts] == ["redial-777", "redial-778"]
    assert contexts[0].text.startswith("User: hi, I loved Alien (1979)") and contexts[0].targets == []


def test_methods_that_train_get_question_answer_targets(tmp_path, oracle_method, tiny_lm):
    make_data_root(tmp_path / "data", PROBES)
    oracle_method.injected.clear()
    outcome = run(request(tmp_path, method="test-oracle-targets"), lm=tiny_lm)
    targets = oracle_method.injected[0][0].targets
    assert targets and all(t.startswith("Question: ") and " Answer: " in t for t in targets)
    assert outcome.result["episodes"][0]["num_targets"] == 4


def test_a_training_conversation_equal_to_a_test_dialog_is_caught(tmp_path, oracle_method, tiny_lm):
    # the probe files label speakers by position, so the check ignores who said what
    leaked = {
        "input": "\nSystem: hi, I loved Alien (1979) any ideas?\nUser: Have you seen Aliens (1986) ?"
        "\nSystem: yes, great\nSystem: ",
        "rec": [2],
        "prev_entity": [0, 1],
        "dialog_id": "test_9",
        "turn_id": 1,
    }
    make_data_root(tmp_path / "data", [leaked])
    with pytest.raises(
        BenchError, match="leakage: the dialog of probe 'test_9:1' is part of training conversation 'redial-777'"
    ):
        run(request(tmp_path), lm=tiny_lm)
    # a short, generic opening shared with a training conversation is no leak
    generic = dict(leaked, input="\nUser: hi, I loved Alien (1979) any ideas?\nSystem: ", dialog_id="test_1")
    make_data_root(tmp_path / "data", [generic])
    answers = run(request(tmp_path), lm=tiny_lm).result["episodes"][0]["predictions"]
    assert [p["probe_id"] for p in answers] == ["test_1:1"]


def test_base_cq_is_refused_with_a_reason(tmp_path, tiny_lm):
    make_data_root(tmp_path / "data", PROBES)
    with pytest.raises(BenchError, match="no gold context"):
        run(request(tmp_path, method="base_cq"), lm=tiny_lm)


def test_missing_probe_folder_and_wrong_dataset_are_one_line_errors(tmp_path, bench):
    (tmp_path / "data").mkdir()
    code, _, err = bench(
        "run",
        "--method",
        "base_q",
        "--task",
        "recommendation",
        "--profile",
        "smoke",
        "--set",
        f"data_path={tmp_path / 'data'}",
        "--out",
        tmp_path / "runs",
    )
    assert code == 2 and "recommendation probes for 'redial' not found" in err
    code, _, err = bench(
        "run",
        "--method",
        "base_q",
        "--task",
        "recommendation",
        "--dataset",
        "fictional",
        "--profile",
        "smoke",
        "--out",
        tmp_path / "runs",
    )
    assert code == 2 and "'fictional' holds qa data, not crs data; the crs data sets: inspired, redial" in err


def test_long_dialogs_lose_their_oldest_turns_to_fit_the_model(tmp_path, oracle_method, tiny_lm):
    turns = "".join(f"\nUser: I want a film number {i} with many many words in it\nSystem: ok {i}" for i in range(60))
    long_probe = {
        "input": turns + "\nUser: so?\nSystem: ",
        "rec": [3],
        "prev_entity": [],
        "dialog_id": "test_2",
        "turn_id": 1,
    }
    make_data_root(tmp_path / "data", [long_probe])
    outcome = run(request(tmp_path), lm=tiny_lm)
    prediction = outcome.result["episodes"][0]["predictions"][0]
    assert prediction["turns_dropped"] > 0
    assert outcome.result["scores"]["recall@1_r1"]["mean"] == 0.0  # "Ronin Returns" comes first


def test_smoke_run_on_the_tiny_model(tmp_path, tiny_lm):
    make_data_root(tmp_path / "data", PROBES)
    outcome = run(request(tmp_path, method="base_q"), lm=tiny_lm)
    predictions = [p for e in outcome.result["episodes"] for p in e["predictions"]]
    assert len(predictions) == 3 and all(isinstance(p["output"], str) for p in predictions)
    assert set(outcome.result["scores"]) >= {f"recall@{k}_r{i}" for k in (1, 5, 10) for i in range(1, 5)}
    assert "eval_s" in outcome.result["cost"]


# ---- the shared data, when present -------------------------------------------------------------


def test_shared_data_loads(shared_data):
    if not (shared_data / "crs" / "redial").is_dir():
        pytest.skip("no CRS data in the shared folder")
    redial, inspired = ReDial(), Inspired()
    assert len(redial.conversations()) == 500 and len(inspired.conversations()) == 100
    probes = redial.probes()
    assert len(probes) == 3552 and len(inspired.probes()) == 228
    catalogue = redial.catalogue()
    assert catalogue.titles[probes[0].gold[0]] == "Police Academy"
    assert all(g in catalogue.items for p in probes for g in p.gold)
    assert sum(len(p.gold) for p in probes) == 4778


def test_shared_data_smoke_run(shared_data, tmp_path, tiny_lm):
    if not (shared_data / "crs" / "inspired").is_dir():
        pytest.skip("no CRS data in the shared folder")
    outcome = run(
        RunRequest(method="base_q", task="recommendation", dataset="inspired", profile="smoke", out=tmp_path),
        lm=tiny_lm,
    )
    assert outcome.result["scores"]["recall@1_r1"]["n"] >= 4
    assert outcome.result["episodes"][0]["num_contexts"] == 3


def test_list_prompt_style_replaces_the_empty_reply_slot():
    from tasks.recommendation import LIST_INSTRUCTION, build_question

    dialog = "\nUser: I love Alien (1979)\nSystem: "
    assert build_question(dialog, "paper") == RECOMMENDER_PROMPT.format(dialog)
    listed = build_question(dialog, "list")
    assert listed.endswith("User: I love Alien (1979)" + LIST_INSTRUCTION)
    assert "System:" not in listed


def test_interrupted_run_resumes_at_the_first_unfinished_shard(tmp_path, oracle_method, tiny_lm):
    make_data_root(tmp_path / "data", PROBES)
    original = oracle_method.generate

    def dies_on_third_probe(self, prompts):
        if any(p.id == "test_2:1" for p in prompts):
            raise KeyboardInterrupt
        return original(self, prompts)

    oracle_method.generate = dies_on_third_probe
    with pytest.raises(KeyboardInterrupt):
        run(request(tmp_path), lm=tiny_lm)
    oracle_method.generate = original
    oracle_method.injected.clear()
    outcome = run(request(tmp_path), lm=tiny_lm)
    assert outcome.resumed_episodes == 1
    assert len(oracle_method.injected) == 1  # injected again, once, for the remaining shard
    assert outcome.result["scores"]["recall@1_r4"]["mean"] == pytest.approx(3 / 4)


def test_a_conversation_without_recommendations_is_injected_without_targets(tmp_path, oracle_method, tiny_lm):
    root = make_data_root(tmp_path / "data", PROBES)
    chat = dict(
        REDIAL_LINE,
        conversationId="779",
        messages=[{"text": "hello", "senderWorkerId": 1}, {"text": "hi, what do you like?", "senderWorkerId": 2}],
    )
    train = root / "redial" / "train_subset500.jsonl"
    train.write_text(train.read_text() + json.dumps(chat) + "\n")
    oracle_method.injected.clear()
    run(request(tmp_path, method="test-oracle-targets"), lm=tiny_lm)
    contexts = {c.id: c for c in oracle_method.injected[0]}
    assert set(contexts) == {"redial-777", "redial-778", "redial-779"}
    assert contexts["redial-779"].targets == [] and len(contexts["redial-777"].targets) == 2
