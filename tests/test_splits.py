"""Which contexts a QA run uses: dev / test splits and first / spread sampling."""

import json
import random

import pytest
from test_errors import assert_clean_error, smoke, write_jsonl

from benchmark.config import RunParams
from benchmark.errors import BenchError
from tasks.batch import BatchParams, BatchTask
from tasks.data.fictional import make_document
from tasks.qa import load_documents

SQUAD = ("squad", "dev-v1.1.part_a.json")


@pytest.fixture
def shared_squad(shared_data):
    if not shared_data.joinpath(*SQUAD).is_file():
        pytest.skip("shared SQuAD copy is absent")
    return shared_data.joinpath(*SQUAD)


def grouped_jsonl(tmp_path, groups=8, per_group=4):
    """A QA file whose contexts come in groups (articles), written group after group."""
    records = [
        {
            "id": f"g{g}-p{p}",
            "context": f"Paragraph {p} of article {g}.",
            "group": f"Article {g}",
            "probes": [{"question": f"Which paragraph of article {g} is this ({p})?", "answers": [str(p)]}],
        }
        for g in range(groups)
        for p in range(per_group)
    ]
    return write_jsonl(tmp_path / "grouped.jsonl", records)


# ---- fictional ------------------------------------------------------------------------------------
def test_fictional_test_contexts_are_the_generators_first_ones():
    rng, used = random.Random("fictional-0"), set()
    expected = [make_document(i, rng, used) for i in range(5)]
    docs = load_documents("fictional", "", 5, 0)
    assert [d.id for d in docs] == [f"fictional-{i:04d}" for i in range(5)] == [d.id for d in expected]
    assert [d.text for d in docs] == [d.text for d in expected]
    assert docs == expected
    assert load_documents("fictional", "", 5, 0, split="test", sample="spread") == expected


def test_fictional_dev_is_disjoint_from_test():
    test = load_documents("fictional", "", 200, 0)
    dev = load_documents("fictional", "", 200, 0, split="dev")
    assert [d.id for d in dev[:2]] == ["fictional-dev-0000", "fictional-dev-0001"]
    assert not {d.id for d in dev} & {d.id for d in test}
    assert not {d.text for d in dev} & {d.text for d in test}
    entity = lambda d: d.text.split(" is a ", 1)[0]  # noqa: E731
    assert not {entity(d) for d in dev} & {entity(d) for d in test}  # no entity in both, with other facts
    assert load_documents("fictional", "", 20, 0, split="dev") == dev[:20]  # deterministic, prefix-stable


def test_fictional_has_no_whole_split():
    with pytest.raises(BenchError, match="no split 'all'"):
        load_documents("fictional", "", 5, 0, split="all")


# ---- finite data sets -----------------------------------------------------------------------------
def test_split_keeps_groups_whole_and_is_disjoint(tmp_path):
    path = str(grouped_jsonl(tmp_path, groups=30))
    whole = load_documents(path, "", None, 0, split="all")
    test = load_documents(path, "", None, 0)
    dev = load_documents(path, "", None, 0, split="dev")
    assert test and dev
    assert not {d.id for d in dev} & {d.id for d in test}
    assert sorted(d.id for d in test + dev) == sorted(d.id for d in whole)
    assert not {d.group for d in dev} & {d.group for d in test}
    assert [d.id for d in test] == [d.id for d in whole if d.group in {t.group for t in test}]  # file order


def test_spread_visits_every_group_before_repeating_one(tmp_path):
    path = str(grouped_jsonl(tmp_path, groups=8, per_group=4))
    first = load_documents(path, "", 8, 0, split="all", sample="first")
    spread = load_documents(path, "", 8, 0, split="all", sample="spread")
    assert len({d.group for d in first}) == 2
    assert len({d.group for d in spread}) == 8
    longer = load_documents(path, "", 16, 0, split="all", sample="spread")
    assert longer[:8] == spread and len({d.group for d in longer[8:]}) == 8
    assert load_documents(path, "", 8, 0, split="all", sample="spread") == spread  # deterministic
    assert load_documents(path, "", 8, 1, split="all", sample="spread") != spread  # seeded


def test_shared_squad_spread_covers_many_articles(shared_squad):
    docs = load_documents("squad", "", 20, 0)  # spread is squad's default
    assert docs == load_documents("squad", "", 20, 0, sample="spread")
    assert docs == load_documents("squad", "", 20, 0)
    assert len({d.group for d in docs}) >= 10
    assert len({d.group for d in load_documents("squad", "", 20, 0, sample="first")}) == 1
    assert load_documents("squad", "", 50, 0)[:20] == docs


def test_shared_squad_dev_and_test_are_disjoint_articles(shared_squad):
    test = load_documents("squad", "", None, 0)
    dev = load_documents("squad", "", None, 0, split="dev")
    assert not {d.id for d in dev} & {d.id for d in test}
    assert not {d.group for d in dev} & {d.group for d in test}
    assert len({d.group for d in dev}) >= 3 and len({d.group for d in test}) >= 10
    assert len(dev) + len(test) == len(load_documents("squad", "", None, 0, split="all"))


# ---- the task and the command line ----------------------------------------------------------------
def test_batch_task_takes_its_split_and_skips_first_context(tmp_path):
    path = str(grouped_jsonl(tmp_path, groups=30))

    def ids(**params):
        task = BatchTask(BatchParams(**params), RunParams(), path, "", 0)
        return [d.id for d in task.load_documents()]

    dev = [d.id for d in load_documents(path, "", None, 0, split="dev", sample="spread")]
    assert ids(num_contexts=3, split="dev", sample="spread") == dev[:3]
    assert ids(num_contexts=3, split="dev", sample="spread", first_context=2) == dev[2:5]
    assert ids(num_contexts=3) == [d.id for d in load_documents(path, "", 3, 0)]


def test_split_recorded_and_used_by_bench_run(bench, tmp_path):
    code, out, err = bench(*smoke("--method", "base_q", "--task", "batch", "--set", "split=dev", "--out", tmp_path))
    assert code == 0, err
    [path] = tmp_path.rglob("*.json")
    result = json.loads(path.read_text())
    assert result["config"]["params"]["task"]["split"] == "dev"
    assert result["config"]["params"]["task"]["sample"] == "default"
    assert result["episodes"][0]["context_ids"] == [f"fictional-dev-{i:04d}" for i in range(3)]


def test_split_too_small_is_one_line(bench, tmp_path):
    data = grouped_jsonl(tmp_path, groups=30)
    size = len(load_documents(str(data), "", None, 0, split="dev"))
    assert_clean_error(
        bench(
            *smoke(
                "--method",
                "base_q",
                "--task",
                "batch",
                "--dataset",
                data,
                "--set",
                "split=dev",
                "--set",
                f"num_contexts={size + 1}",
                "--out",
                tmp_path / "o",
            )
        ),
        f"dataset '{data}' split 'dev' has {size} contexts, fewer than the {size + 1} asked for",
        out_dir=tmp_path / "o",
    )


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("split=train", "split must be one of test, dev, all, not 'train'"),
        ("sample=random", "sample must be one of first, spread or default, not 'random'"),
    ],
)
def test_bad_split_or_sample_is_one_line(bench, tmp_path, setting, needle):
    assert_clean_error(
        bench(*smoke("--method", "base_q", "--task", "batch", "--set", setting, "--out", tmp_path)),
        needle,
        out_dir=tmp_path,
    )
