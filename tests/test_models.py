import dataclasses

import torch

from benchmark.models import DEMONSTRATIONS, first_answer_line, load_lm
from benchmark.types import Prompt


def test_answer_extraction_strips_prefixes_and_takes_first_line():
    assert first_answer_line("\nThe answer is: Arketh\nmore") == "Arketh"
    assert first_answer_line(" A: 1721") == "1721"
    assert first_answer_line("The answer is:\nA:\n") == ""
    assert first_answer_line("Answer - blue glass") == "blue glass"
    assert first_answer_line("The answer is Arketh.") == "Arketh."
    assert first_answer_line("A-10 Warthog") == "A-10 Warthog"  # an answer, not an "A:" prefix
    assert first_answer_line("Answers vary") == "Answers vary"


def test_raw_prompt_format_with_and_without_context(tiny_lm):
    bare = dataclasses.replace(tiny_lm, fewshot=0)  # the session fixture itself stays as it is
    assert bare.format_prompt(Prompt("x", "Who?")) == "Question: Who? Answer:"
    assert bare.format_prompt(Prompt("x", "Who?", "Ann sang.")) == "Context: Ann sang.\nQuestion: Who? Answer:"
    one_shot = dataclasses.replace(tiny_lm, fewshot=1)
    context, question, answer = DEMONSTRATIONS[0]
    with_demo = one_shot.format_prompt(Prompt("x", "Who?"))
    assert with_demo == f"Question: {question} Answer: {answer}\n\nQuestion: Who? Answer:"
    assert one_shot.format_prompt(Prompt("x", "Who?", "Ann sang.")).startswith(f"Context: {context}\n")


def test_chat_prompt_uses_the_template(tiny_lm):
    text = tiny_lm.format_prompt(Prompt("x", "Recommend a film.", chat=True))
    assert "Recommend a film." in text and text != "Recommend a film."


def test_tiny_model_is_seeded_and_generates(tiny_lm):
    other = load_lm("tiny-random-llama", precision="fp32", device="cpu")
    for a, b in zip(tiny_lm.model.parameters(), other.model.parameters()):
        assert torch.equal(a, b)
    outputs = tiny_lm.generate(["Question: a? Answer:", "Question: longer one here? Answer:"], max_new_tokens=3)
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    assert not any(p.requires_grad for p in tiny_lm.model.parameters())


def test_generation_is_independent_of_batching(tiny_lm):
    prompts = [f"Question: item {i}? Answer:" for i in range(5)]
    together = tiny_lm.generate(prompts, max_new_tokens=4, batch_size=5, stop_at_newline=False)
    alone = [tiny_lm.generate([p], max_new_tokens=4, stop_at_newline=False)[0] for p in prompts]
    assert together == alone


def test_a_row_is_done_once_its_first_answer_line_is_complete(tiny_lm):
    from benchmark.models.lm import AnswerLineDone

    texts = ["Rome\nmore", "\n\nRo", "Answer:\n", "The answer is: Arketh\n", "Rome", "A:\nB\n"]
    encoded = [tiny_lm.encode(t, add_bos=False) for t in texts]
    width = max(len(e) for e in encoded)
    pad = tiny_lm.tokenizer.pad_token_id
    rows = torch.tensor([[7, 8] + e + [pad] * (width - len(e)) for e in encoded])  # a two-token "prompt"
    done = AnswerLineDone(tiny_lm.tokenizer, prompt_width=2)(rows, torch.zeros(len(texts), 5))
    assert done.tolist() == [True, False, False, True, False, True]


def test_generation_stops_when_every_answer_line_is_complete_with_the_same_answers(tiny_lm):
    """Scripted continuations (a logits processor allows one token per step): the batch stops once
    all rows have a complete answer line, and ``first_answer_line`` reads what it read from the
    full continuation."""
    from transformers import LogitsProcessorList

    from benchmark.models.lm import AnswerLineDone

    scripts = ["Paris\nthen more text", "\n\nRome\nthen", "Answer:\nBerlin\nand"]
    encoded = [tiny_lm.encode(s, add_bos=False) for s in scripts]
    longest = max(len(e) for e in encoded)

    def scripted(input_ids, scores):
        step = input_ids.shape[1] - 2
        forced = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(encoded):
            forced[row, ids[min(step, len(ids) - 1)]] = 0.0
        return forced

    prompt = torch.tensor([[7, 8]] * len(scripts))

    def answers(stopping):
        out = tiny_lm.model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=longest,
            do_sample=False,
            logits_processor=LogitsProcessorList([scripted]),
            stopping_criteria=stopping,
            pad_token_id=tiny_lm.tokenizer.pad_token_id,
        )
        texts = [tiny_lm.tokenizer.decode(row[2:], skip_special_tokens=True) for row in out]
        return out.shape[1] - 2, [first_answer_line(t) for t in texts]

    stopped_after, stopped = answers([AnswerLineDone(tiny_lm.tokenizer, prompt_width=2)])
    full_length, full = answers(None)
    assert stopped == full == ["Paris", "Rome", "Berlin"]
    assert stopped_after < full_length == longest


def test_the_prefix_all_prompts_share_leaves_each_a_token_of_its_own():
    from benchmark.models.lm import SHARED_PREFIX_MIN, shared_prefix

    base = list(range(100, 100 + SHARED_PREFIX_MIN))
    assert shared_prefix([base + [1, 2], base + [1, 3], base + [1, 2, 4]]) == base + [1]
    assert shared_prefix([base + [1], base + [1, 2]]) == base  # the shorter keeps its last token
    assert shared_prefix([base[:-1] + [1], base[:-1] + [2]]) == []  # too short to be worth a pass
    assert shared_prefix([base + [1]]) == []  # one prompt: nothing shared


def test_greedy_answers_after_a_shared_prefix_continue_one_pass_over_it(tiny_lm, monkeypatch):
    """Prompts that start with the same demonstrations run them once for the whole call; the
    answers are those of passes over each whole prompt, batched with padding before the rest."""
    import benchmark.models.lm as lm_module

    demos = "Question: Where does Lena Hart live? Answer: Orvik\n\n" * 3
    prompts = [
        demos + f"Question: {q}? Answer:" for q in ("a", "who built the big stone bridge", "b c", "d", "e f g h")
    ]
    prefix = len(lm_module.shared_prefix([tiny_lm.encode(p) for p in prompts]))
    seen = []
    hook = tiny_lm.model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    try:
        shared = tiny_lm.generate(prompts, max_new_tokens=4, batch_size=2, stop_at_newline=False)
        shared_tokens = sum(seen)
        seen.clear()
        monkeypatch.setattr(lm_module, "SHARED_PREFIX_MIN", 10**9)
        whole = tiny_lm.generate(prompts, max_new_tokens=4, batch_size=2, stop_at_newline=False)
    finally:
        hook.remove()
    assert shared == whole
    assert prefix > 30 and shared_tokens < sum(seen) - 2 * prefix  # three batches, the prefix run once
