"""Retrieval baselines: ranking on a hand-made corpus, prompt fitting, the RAPTOR tree, footprints."""

from __future__ import annotations

import pytest

from benchmark.config import RunParams
from benchmark.types import Context, Prompt
from methods.raptor import Raptor, RaptorParams
from methods.retrieval import BM25, BM25Params, DenseRetrieval, DPRParams, chunk_text, tokenize

CORPUS = [
    Context("volcano", "Mount Oskarra is a volcano that last erupted in 1783, covering the valley in ash."),
    Context("bakery", "The Hollin bakery sells rye bread and cinnamon rolls every morning from six."),
    Context("football", "The Redmoor football club won the league final by three goals to one."),
    Context("violin", "Ada Verent repaired old violins and cellos in her workshop by the harbour."),
    Context("comet", "Astronomers tracked the comet Halvessa as it passed close to the Sun."),
]
QUERIES = [
    ("When did Mount Oskarra erupt?", "volcano"),
    ("What does the Hollin bakery sell?", "bakery"),
    ("Which club won the football league final?", "football"),
    ("What instruments did Ada Verent repair?", "violin"),
    ("Which comet passed near the Sun?", "comet"),
]

TOPICS = {
    "astronomy": [
        "Jupiter has dozens of moons and a storm larger than the Earth.",
        "A telescope on a dark mountain can photograph faint galaxies.",
        "Comets grow bright tails of gas when they approach the Sun.",
        "The Andromeda galaxy is slowly moving towards the Milky Way.",
        "During a total solar eclipse the sky turns dark at midday.",
        "Neutron stars are the collapsed cores of massive dead stars.",
        "Mars looks red because its dusty surface is rich in iron oxide.",
        "Meteor showers happen when Earth crosses the debris of a comet.",
        "Saturn's rings are made of countless pieces of ice and rock.",
        "Light from distant nebulae takes thousands of years to reach us.",
    ],
    "cooking": [
        "Knead the dough for ten minutes before letting the bread rise.",
        "A good risotto needs warm stock added one ladle at a time.",
        "Brown the onions slowly in butter to sweeten the soup.",
        "Rest the roast chicken for a while before carving it.",
        "Whisk the eggs with sugar until the cake batter turns pale.",
        "Toast the cumin seeds in a dry pan to release their aroma for the curry.",
        "Salt the pasta water generously before the spaghetti goes in.",
        "Simmer the beef stew gently for three hours until tender.",
        "Chill the pastry so the pie crust stays flaky in the oven.",
        "Season the salad dressing with lemon juice, olive oil and pepper.",
    ],
    "football": [
        "The goalkeeper saved a penalty in the final minute of the match.",
        "The striker scored twice in the second half of the derby.",
        "The referee showed a red card after a dangerous tackle.",
        "The club signed a young midfielder for a record transfer fee.",
        "Fans filled the stadium to watch the cup final.",
        "A corner kick was headed into the net by the captain.",
        "The offside rule stops attackers from waiting behind the defence.",
        "The team climbed to the top of the league table after ten wins.",
        "The coach changed the formation at half time.",
        "The world cup is held every four years.",
    ],
    "gardening": [
        "Prune the roses in late winter to encourage new shoots.",
        "Tomato seedlings need plenty of sun and regular watering.",
        "A compost heap turns kitchen scraps into rich soil.",
        "Pull the weeds before they set seed in the flower beds.",
        "Plant tulip bulbs in autumn for colour in the spring.",
        "A greenhouse lets gardeners grow peppers in a cold climate.",
        "Mulch keeps moisture in the soil during a dry summer.",
        "Trim the hedge after the birds have finished nesting.",
        "Earthworms improve the soil by mixing in fallen leaves.",
        "Sow lettuce every few weeks for a steady harvest.",
    ],
}


def topic_corpus() -> list[Context]:
    """40 one-sentence contexts, ten on each of four topics."""
    return [Context(f"{topic}-{i}", text) for topic, texts in TOPICS.items() for i, text in enumerate(texts)]


def concatenating_summarizer(texts: list[str]) -> list[str]:
    """A cheap stand-in for the LM: the summary of a cluster is its members' text on one line."""
    return [" ".join(t.split()) for t in texts]


def make(cls, params, lm):
    return cls(lm, params, RunParams(fewshot=0, eval_batch_size=8, precision="fp32"))


@pytest.mark.parametrize("cls,params", [(BM25, BM25Params()), (DenseRetrieval, DPRParams())], ids=["bm25", "dpr"])
def test_index_ranks_the_right_document_first(cls, params, tiny_lm):
    method = make(cls, params, tiny_lm)
    method.inject(CORPUS)
    for question, gold in QUERIES:
        [first, *_] = method.search([question], 3)[0]
        assert method.passages[first].context_id == gold, question


@pytest.mark.parametrize("variant", ["plus", "l"])
def test_bm25_default_variants_rank_on_a_two_document_corpus(variant, tiny_lm):
    method = make(BM25, BM25Params(variant=variant), tiny_lm)
    method.inject(CORPUS[:2])
    assert method.passages[method.search(["Hollin bakery rolls"], 1)[0][0]].context_id == "bakery"


def test_bm25_okapi_is_blind_on_two_documents(tiny_lm):
    # Why "plus" is the default: Okapi's idf is log(1.5/1.5) = 0 for a word in one of two documents.
    method = make(BM25, BM25Params(variant="okapi"), tiny_lm)
    method.inject(CORPUS[:2])
    assert not method.bm25.get_scores(tokenize("Hollin bakery rolls")).any()


def test_tokenize_lowercases_strips_punctuation_and_stems():
    assert tokenize("Cats, running!") == ["cat", "run"]
    assert tokenize("Cats, running!", stem=False) == ["cats", "running"]


def test_generate_prepends_retrieved_text_and_records_ids(tiny_lm, monkeypatch):
    method = make(BM25, BM25Params(top_k=2), tiny_lm)
    method.inject(CORPUS[:3])
    method.inject(CORPUS[3:])  # a second injection (sequential): the index grows
    seen: list[str] = []
    monkeypatch.setattr(tiny_lm, "generate", lambda prompts, **kw: seen.extend(prompts) or ["x"] * len(prompts))
    answers = method.answer([Prompt("comet", "Which comet passed near the Sun?")])
    assert [a.text for a in answers] == ["x"]
    assert answers[0].retrieved is not None
    assert answers[0].retrieved[0] == "comet" and len(answers[0].retrieved) == 2
    assert "Halvessa" in seen[0] and seen[0].index("Context:") < seen[0].index("Question:")


@pytest.mark.parametrize("order", ["best_last", "best_first"])
def test_passage_order_in_the_prompt(order, tiny_lm, monkeypatch):
    method = make(BM25, BM25Params(top_k=2, order=order), tiny_lm)
    method.inject(CORPUS)
    seen: list[str] = []
    monkeypatch.setattr(tiny_lm, "generate", lambda prompts, **kw: seen.extend(prompts) or [""] * len(prompts))
    method.generate([Prompt("volcano", "When did Mount Oskarra erupt?")])
    second = method.passages[method.search(["When did Mount Oskarra erupt?"], 2)[0][1]].text
    best_at, second_at = seen[0].index("Oskarra is a volcano"), seen[0].index(second)
    assert (best_at > second_at) == (order == "best_last")


def test_empty_index_asks_without_context(tiny_lm, monkeypatch):
    method = make(DenseRetrieval, DPRParams(), tiny_lm)
    seen: list[str] = []
    monkeypatch.setattr(tiny_lm, "generate", lambda prompts, **kw: seen.extend(prompts) or [""] * len(prompts))
    answers = method.answer([Prompt("x", "Who?")])
    assert answers[0].retrieved == () and "Context:" not in seen[0]


def test_retrieved_text_is_cut_to_the_model_window(tiny_lm, monkeypatch):
    long = Context("long", " ".join(f"Sentence number {i} talks about the lighthouse keeper." for i in range(300)))
    method = make(BM25, BM25Params(top_k=5, chunk_tokens=200, max_context_tokens=100_000), tiny_lm)
    method.inject([long])
    assert len(method.passages) > 5 and all(p.tokens <= 200 for p in method.passages)
    seen: list[str] = []
    monkeypatch.setattr(tiny_lm, "generate", lambda prompts, **kw: seen.extend(prompts) or [""] * len(prompts))
    answers = method.answer([Prompt("long", "What does the lighthouse keeper do?", max_new_tokens=10)])
    assert "lighthouse" in seen[0]
    assert len(tiny_lm.encode(seen[0])) + 10 <= tiny_lm.max_length
    assert answers[0].retrieved == ("long",)

    method.params.max_context_tokens = 40  # less than one passage: the best one is cut to fit
    answers = method.answer([Prompt("long", "What does the lighthouse keeper do?", max_new_tokens=10)])
    context = seen[-1].split("Context: ", 1)[1].split("\nQuestion:", 1)[0]
    assert 30 <= len(tiny_lm.encode(context, add_bos=False)) <= 42
    assert answers[0].retrieved == ("long",)


def test_chunks_keep_whole_sentences_within_the_size(tiny_lm):
    text = "First short sentence. Second short sentence! " + "word " * 100 + ". Last one?"
    chunks = chunk_text(text, tiny_lm, 20)
    assert chunks[0].text == "First short sentence. Second short sentence!"
    assert all(c.tokens <= 20 for c in chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")


def test_raptor_builds_layers_and_retrieves_a_summary_for_a_broad_query(tiny_lm):
    method = make(Raptor, RaptorParams(top_k=3), tiny_lm)
    method.summarizer = concatenating_summarizer
    method.inject(topic_corpus())
    assert len(method.layers) >= 2 and len(method.layers[0]) == 40
    summaries = [method.nodes[i] for i in method.layers[1]]
    assert 2 <= len(summaries) < 40
    assert all(node.passage.context_id is None and node.children for node in summaries)
    best = method.search(["What should a cook know about preparing bread, soup, pasta, stew and pie?"], 3)[0][0]
    assert method.nodes[best].layer >= 1
    covered = {method.nodes[c].passage.context_id for c in method.nodes[best].children}
    assert covered and all(cid.startswith("cooking") for cid in covered)
    # a specific question still finds its leaf
    best = method.search(["When should tulip bulbs be planted?"], 1)[0][0]
    assert method.nodes[best].passage.context_id == "gardening-4"


def test_raptor_small_inputs(tiny_lm):
    method = make(Raptor, RaptorParams(min_nodes=3, chunk_tokens=48), tiny_lm)
    method.summarizer = concatenating_summarizer
    method.inject(CORPUS[:1])  # one leaf: no tree, still retrievable
    assert len(method.layers) == 1 and method.search(["volcano"], 1) == [[0]]
    method.inject(topic_corpus()[:4] + topic_corpus()[10:14])  # nine leaves: too few for UMAP
    assert [len(layer) for layer in method.layers] == [9, 1]  # one cluster, summarised as the root
    assert len(method.nodes[method.layers[1][0]].children) == 9
    answers = method.answer([Prompt("volcano", "When did Mount Oskarra erupt?")])
    assert len(answers) == 1 and answers[0].retrieved is not None and answers[0].retrieved[0] == "volcano"
    found = method.search(["When did Mount Oskarra erupt?"], method.params.top_k)[0]
    root = method.layers[1][0]
    assert method.stats["summary_passages"] == int(root in found)  # summaries reaching prompts are counted
    broad = "Volcano eruption, Jupiter's moons, telescopes and galaxies, comets, bread dough, risotto and soup"
    assert method.search([broad], 1)[0] == [root]
    method.generate([Prompt("x", broad)])
    assert method.stats["summary_passages"] == int(root in found) + 1


def test_raptor_summaries_come_from_the_lm_and_are_cached(tiny_lm, monkeypatch):
    method = make(Raptor, RaptorParams(summary_tokens=12), tiny_lm)
    calls: list[tuple[list[str], dict]] = []

    def fake_generate(prompts, **kwargs):
        calls.append((prompts, kwargs))
        return [f"summary {i}" for i in range(len(prompts))]

    monkeypatch.setattr(tiny_lm, "generate", fake_generate)
    texts = ["Alpha text about ships.", "Beta text about trains."]
    assert method.summaries(texts) == ["summary 0", "summary 1"]
    [(prompts, kwargs)] = calls
    assert "Write a summary of the following" in prompts[0] and "Alpha text" in prompts[0]
    assert kwargs["max_new_tokens"] == 12 and kwargs["stop_at_newline"] is False
    assert method.summaries(texts[::-1]) == ["summary 1", "summary 0"] and len(calls) == 1
    assert method.stats["summaries"] == 2


@pytest.mark.parametrize(
    "cls,params",
    [(BM25, BM25Params()), (DenseRetrieval, DPRParams()), (Raptor, RaptorParams())],
    ids=["bm25", "dpr", "raptor"],
)
def test_footprint_is_measured_and_grows(cls, params, tiny_lm):
    method = make(cls, params, tiny_lm)
    if isinstance(method, Raptor):
        method.summarizer = concatenating_summarizer
    assert method.footprint().extra_bytes == 0
    method.inject(CORPUS[:2])
    small = method.footprint()
    method.inject(CORPUS[2:] + topic_corpus()[:10])
    large = method.footprint()
    assert 0 < small.extra_bytes < large.extra_bytes
    assert large.detail["index_bytes"] > small.detail["index_bytes"] > 0
