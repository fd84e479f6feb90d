"""The built-in data set: short paragraphs about invented entities.

Every name and fact is drawn from a seeded random generator, so no model can know them before
injection (Base, Q scores near zero) and every machine builds the same set. Each attribute has two
disjoint families of question phrasings: one for the probes that score a method, one for the
training QA pairs that the ``dataset`` target-sentence generator hands to parametric methods.

Splits: the test contexts are the generator's stream ``fictional-{seed}`` in order (``fictional-0000``,
``fictional-0001``, ...: the contexts of every run before splits existed). The dev contexts
(``fictional-dev-0000``, ...) come from a second stream, ``fictional-dev-{seed}``, and never reuse
the name of an entity among the first ``RESERVED_TEST_NAMES`` test contexts, so tuning on dev
teaches nothing about a test entity. Every context is an independent draw with no group, so
``sample=spread`` takes them in the same order as ``first``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from benchmark.errors import BenchError
from benchmark.registry import register_dataset
from benchmark.types import QA, Document
from tasks.data.base import QADataset

_ONSETS = "b br c d dr f g gr h k l m n p pr r s st t tr v z".split()
_VOWELS = "a e i o u ai ea ou".split()
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "x"]


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    return "".join(_syllable(rng) for _ in range(rng.randint(*syllables))).capitalize()


@dataclass(frozen=True)
class Attribute:
    """One fact about an entity: how to draw it, state it, ask it and teach it."""

    key: str
    draw: Callable[[random.Random], str]
    statement: str  # uses {name} and {value}
    probe_questions: tuple[str, ...]  # probe phrasings (uses {name})
    train_questions: tuple[str, ...]  # training phrasings, disjoint from the probes


def _person(rng: random.Random) -> str:
    return f"{_word(rng, (2, 2))} {_word(rng, (2, 3))}"


def _year(rng: random.Random) -> str:
    return str(rng.randint(1450, 1990))


def _pick(options: list[str]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(options)


ENTITY_TYPES: dict[str, tuple[str, list[Attribute]]] = {
    "town": (
        "{name} is a town.",
        [
            Attribute(
                "province",
                _word,
                "{name} lies in the province of {value}.",
                ("In which province is {name}?",),
                ("{name} is located in what province?", "Name the province that contains {name}."),
            ),
            Attribute(
                "founder",
                _person,
                "It was founded by {value}.",
                ("Who founded {name}?",),
                ("Which person established the town of {name}?", "{name} owes its founding to whom?"),
            ),
            Attribute(
                "year",
                _year,
                "The town was established in {value}.",
                ("In what year was {name} founded?",),
                ("When was the town of {name} established?", "{name} dates back to which year?"),
            ),
            Attribute(
                "product",
                _pick(
                    [
                        "copper bells",
                        "blue glass",
                        "wool rugs",
                        "salt cheese",
                        "cedar boats",
                        "paper lanterns",
                        "iron keys",
                        "honey wine",
                    ]
                ),
                "{name} is famous for its {value}.",
                ("What is {name} known for?",),
                ("Which goods made {name} famous?", "What does the town of {name} produce that it is renowned for?"),
            ),
            Attribute(
                "river",
                _word,
                "The river that runs through {name} is the {value}.",
                ("Which river flows through {name}?",),
                ("Name the river of {name}.", "What river crosses the town of {name}?"),
            ),
        ],
    ),
    "person": (
        "{name} is a person.",
        [
            Attribute(
                "profession",
                _pick(
                    [
                        "clockmaker",
                        "cartographer",
                        "glassblower",
                        "astronomer",
                        "beekeeper",
                        "violin maker",
                        "lighthouse keeper",
                        "botanist",
                    ]
                ),
                "{name} worked as a {value}.",
                ("What was the profession of {name}?",),
                ("What job did {name} have?", "{name} earned a living as what?"),
            ),
            Attribute(
                "birthplace",
                _word,
                "{name} was born in the village of {value}.",
                ("Where was {name} born?",),
                ("In which village did {name} come into the world?", "Name the birthplace of {name}."),
            ),
            Attribute(
                "invention",
                _pick(
                    [
                        "a folding telescope",
                        "a water clock",
                        "a seed drill",
                        "a mirror compass",
                        "a rope bridge",
                        "a wind organ",
                    ]
                ),
                "{name} invented {value}.",
                ("What did {name} invent?",),
                ("Which device was created by {name}?", "{name} is credited with inventing what?"),
            ),
            Attribute(
                "mentor",
                _person,
                "{name} studied under {value}.",
                ("Who was the teacher of {name}?",),
                ("Under whom did {name} study?", "Name the mentor of {name}."),
            ),
            Attribute(
                "year",
                _year,
                "{name} was born in {value}.",
                ("In what year was {name} born?",),
                ("{name} was born in which year?", "What is the birth year of {name}?"),
            ),
        ],
    ),
    "company": (
        "{name} is a company.",
        [
            Attribute(
                "city",
                _word,
                "{name} has its headquarters in {value}.",
                ("Where is {name} headquartered?",),
                ("In which city are the offices of {name}?", "Name the headquarters city of {name}."),
            ),
            Attribute(
                "product",
                _pick(
                    [
                        "garden robots",
                        "paper umbrellas",
                        "solar kettles",
                        "silk maps",
                        "toy airships",
                        "glass pianos",
                        "canned soup",
                        "wooden bicycles",
                    ]
                ),
                "{name} makes {value}.",
                ("What does {name} make?",),
                ("Which products come from {name}?", "{name} is a maker of what?"),
            ),
            Attribute(
                "ceo",
                _person,
                "The chief executive of {name} is {value}.",
                ("Who is the chief executive of {name}?",),
                ("Who runs {name} as its CEO?", "Name the head of {name}."),
            ),
            Attribute(
                "year",
                _year,
                "{name} opened its doors in {value}.",
                ("In what year did {name} open?",),
                ("When was {name} founded?", "{name} started business in which year?"),
            ),
            Attribute(
                "mascot",
                _pick(["a red fox", "a green owl", "a silver whale", "a yellow goat", "a purple crab", "a golden bee"]),
                "Its mascot is {value}.",
                ("What is the mascot of {name}?",),
                ("Which animal represents {name} as mascot?", "{name} uses what mascot?"),
            ),
        ],
    ),
    "species": (
        "{name} is a species.",
        [
            Attribute(
                "habitat",
                _pick(
                    [
                        "salt marshes",
                        "pine forests",
                        "cave lakes",
                        "coral reefs",
                        "high deserts",
                        "bamboo valleys",
                        "river deltas",
                    ]
                ),
                "The {name} lives in {value}.",
                ("Where does the {name} live?",),
                ("What is the habitat of the {name}?", "In what kind of place is the {name} found?"),
            ),
            Attribute(
                "color",
                _pick(["orange", "teal", "violet", "grey", "crimson", "olive", "amber"]),
                "Its fur is {value}.",
                ("What color is the {name}?",),
                ("Which colour does the fur of the {name} have?", "The {name} has fur of what colour?"),
            ),
            Attribute(
                "diet",
                _pick(["snails", "seeds", "beetles", "moss", "small fish", "wild figs"]),
                "The {name} feeds on {value}.",
                ("What does the {name} eat?",),
                ("What is the diet of the {name}?", "The {name} survives by eating what?"),
            ),
            Attribute(
                "discoverer",
                _person,
                "It was first described by {value}.",
                ("Who discovered the {name}?",),
                ("Which naturalist first described the {name}?", "The {name} was first recorded by whom?"),
            ),
            Attribute(
                "length",
                lambda rng: f"{rng.randint(3, 90)} centimetres",
                "An adult {name} is about {value} long.",
                ("How long is an adult {name}?",),
                ("What length does a grown {name} reach?", "An adult {name} measures how much?"),
            ),
        ],
    ),
}


# Dev entities avoid the names of this many test contexts (more than any profile uses: paper is 1000).
RESERVED_TEST_NAMES = 2000


def make_document(index: int, rng: random.Random, used_names: set[str], prefix: str = "fictional") -> Document:
    """One context: an entity of a random type with all its attributes, probes and training QA."""
    entity_type = list(ENTITY_TYPES)[index % len(ENTITY_TYPES)]
    intro, attributes = ENTITY_TYPES[entity_type]
    name = _word(rng)
    while name in used_names:
        name = _word(rng)
    used_names.add(name)
    sentences: list[str] = [intro.format(name=name)]
    probes: list[QA] = []
    train: list[QA] = []
    for attribute in attributes:
        value = attribute.draw(rng)
        sentences.append(attribute.statement.format(name=name, value=value))
        probe_q = rng.choice(attribute.probe_questions).format(name=name)
        probes.append(QA(probe_q, (value,)))
        train.extend(QA(q.format(name=name), (value,)) for q in attribute.train_questions)
    return Document(
        id=f"{prefix}-{index:04d}",
        text=" ".join(sentences),
        probes=tuple(probes),
        train_qa=tuple(train),
        source=f"{prefix} #{index}",
    )


def generate(stream: str, count: int, prefix: str, used_names: set[str]) -> list[Document]:
    """``count`` contexts of the random stream ``stream``, avoiding (and adding to) ``used_names``."""
    rng = random.Random(stream)
    return [make_document(i, rng, used_names, prefix) for i in range(count)]


@register_dataset("fictional")
class Fictional(QADataset):
    description = "built-in: invented towns, people, companies and species (no model knows them)"

    def documents(self, limit: int | None = None) -> list[Document]:
        """The test contexts, ``fictional-0000`` onwards (100 when ``limit`` is None)."""
        return generate(f"fictional-{self.seed}", 100 if limit is None else limit, "fictional", set())

    def dev_documents(self, limit: int | None = None) -> list[Document]:
        """The dev contexts, ``fictional-dev-0000`` onwards, about entities no test context names."""
        test_names: set[str] = set()
        generate(f"fictional-{self.seed}", RESERVED_TEST_NAMES, "fictional", test_names)
        return generate(f"fictional-dev-{self.seed}", 100 if limit is None else limit, "fictional-dev", test_names)

    def select(self, split: str, sample: str, limit: int | None) -> list[Document]:
        if split == "test":
            return self.documents(limit)
        if split == "dev":
            return self.dev_documents(limit)
        raise BenchError(f"dataset {self.name!r} has no split {split!r}: it generates separate test and dev contexts")
