from benchmark.metrics import normalize_answer
from tasks.data.fictional import Fictional


def test_same_seed_same_documents_and_prefix_stable():
    a = Fictional(seed=0).documents(12)
    b = Fictional(seed=0).documents(12)
    assert a == b
    assert Fictional(seed=0).documents(5) == a[:5]
    assert Fictional(seed=1).documents(5) != a[:5]


def test_probes_and_training_questions_are_disjoint_and_answers_in_text():
    for doc in Fictional().documents(40):
        probe_qs = {normalize_answer(p.question) for p in doc.probes}
        train_qs = {normalize_answer(t.question) for t in doc.train_qa}
        assert probe_qs and train_qs
        assert not probe_qs & train_qs
        for qa in doc.probes:
            assert qa.answers[0] in doc.text
        # every probed fact is also taught by some training question
        assert {p.answers for p in doc.probes} <= {t.answers for t in doc.train_qa}


def test_entity_names_are_unique():
    docs = Fictional().documents(100)
    names = [doc.text.split(" is a ")[0] for doc in docs]
    assert len(set(names)) == len(names)
    assert len({doc.id for doc in docs}) == 100
