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
