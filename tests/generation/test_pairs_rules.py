import pytest

from esevo_ray.generation.pairs import choose, request_seed


def test_refined_kept_when_short_enough():
    assert choose("I hear how tired you are.", "That is sad to hear.", "Tell me more.", 2.0) == (
        "I hear how tired you are.",
        "refined",
    )


def test_parse_failure_falls_back_to_golden():
    assert choose(None, "y", "golden text", 2.0) == ("golden text", "golden_parse_failure")


def test_length_rule_against_rejected_and_golden():
    long = " ".join(["word"] * 9)
    assert choose(long, "four words in here", "a much longer golden response with many words", 2.0)[
        1
    ] == ("golden_length_rule")
    assert choose(
        long, "a much longer rejected response with many words", "four words in here", 2.0
    )[1] == ("golden_length_rule")
    assert choose(long, "one two three four five", "one two three four five", 2.0)[1] == "refined"


def test_a_refinement_that_repeats_the_rejected_response_is_no_pair():
    rejected = "That sounds hard. What happened?"
    assert choose("  That sounds hard.\nWhat happened? ", rejected, "Tell me more.", 2.0) == (
        "Tell me more.",
        "golden_unchanged",
    )
    assert choose("That sounds hard. What happened then?", rejected, "Tell me.", 3.0)[1] == (
        "refined"
    )


def test_case_and_punctuation_alone_are_no_refinement():
    assert choose("sorry, that sounds HARD!", "Sorry. That sounds hard.", "Tell me.", 2.0)[1] == (
        "golden_unchanged"
    )
    assert (
        choose(
            "Sorry, that sounds hard for you.", "Sorry. That sounds hard.", "Tell me more.", 3.0
        )[1]
        == "refined"
    )


def test_an_empty_rejected_response_is_counted_apart():
    assert choose("I am here for you.", "  ", "Tell me more.", 2.0) == (
        "Tell me more.",
        "golden_empty_rejected",
    )


def test_request_seed_is_stable_and_distinct():
    a = request_seed(0, "d1", 3, 1, "refine", 0)
    assert a == request_seed(0, "d1", 3, 1, "refine", 0)
    assert (
        len({a, request_seed(0, "d1", 3, 1, "refine", 1), request_seed(0, "d1", 3, 2, "refine", 0)})
        == 3
    )


class _WordEngine:
    """Counts one token per word: enough to test the context budget without a model."""

    def count_tokens(self, messages):
        return sum(len(m["content"].split()) for m in messages)


def test_fit_context_drops_oldest_turns_then_shortens_the_last():
    from esevo_ray.config import load_config
    from esevo_ray.generation.pairs import fit_context
    from esevo_ray.prompts import TASK_PROMPT

    base = len(TASK_PROMPT.split())
    cfg = load_config(
        None,
        [f"generation.max_context_tokens={base + 12}", "generation.max_model_len=4096",
         "generation.decoding.max_new_tokens=8"],
    ).generation  # fmt: skip
    ctx = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"w{i} " * 5} for i in range(7)
    ]
    fitted = fit_context(_WordEngine(), ctx, cfg)
    # Whole exchanges go: ctx[-2:] would open the context with the supporter's turn.
    assert fitted == ctx[-1:]
    huge = [{"role": "user", "content": " ".join(f"x{i}" for i in range(500))}]
    short = fit_context(_WordEngine(), huge, cfg)
    assert short[0]["content"].endswith("x499") and len(short[0]["content"].split()) <= 12

    # A turn of few but long words (a pasted log) keeps its last characters: it failed the
    # whole stage, on every rerun, with "the prompts do not fit".
    class CharEngine:
        def count_tokens(self, messages):
            return sum(len(m["content"]) // 4 + 1 for m in messages)

    budget = CharEngine().count_tokens([{"content": TASK_PROMPT}]) + 40
    gen = cfg.model_copy(update={"max_context_tokens": budget})
    pasted = [{"role": "user", "content": "I feel " + "so" * 3000 + " sad today"}]
    fitted = fit_context(CharEngine(), pasted, gen, refine=False)
    assert fitted[0]["content"].endswith("so sad today") and len(fitted[0]["content"]) < 200


def test_two_step_refinement_leaves_room_for_the_reflection_it_holds():
    """Eq. 5's request holds C_n, y and the reflection; with the budget of the joint request it
    would reach max_model_len, and vLLM would cut the JSON answer short every attempt."""
    from esevo_ray import prompts
    from esevo_ray.config import load_config
    from esevo_ray.generation.pairs import fit_context

    ctx = [{"role": "user" if i % 2 == 0 else "assistant", "content": "w " * 60} for i in range(40)]
    for mode in ("joint", "two_step"):
        gen = load_config(None, [f"generation.reflection_mode={mode}"]).generation
        fitted = fit_context(_WordEngine(), ctx, gen)
        rejected = " ".join(["y"] * gen.decoding.max_new_tokens)
        reflection = {"user_profile": " ".join(["r"] * gen.reflection_decoding.max_new_tokens)}
        request = prompts.refine_messages(
            fitted, rejected, reflection if mode == "two_step" else None
        )
        longest = _WordEngine().count_tokens(request) + gen.reflection_decoding.max_new_tokens
        assert longest <= gen.max_model_len, (mode, longest)


def test_an_evaluation_context_is_fitted_to_its_own_request_only():
    """r_n = M(P || C_n) is one request: the refinement budget (set by the reflection
    settings) has no say in it, and the system prompt sent (a Table 3 ablation's) is counted."""
    from esevo_ray.config import load_config
    from esevo_ray.generation.pairs import fit_context
    from esevo_ray.prompts import TASK_PROMPT

    ctx = [{"role": "user" if i % 2 == 0 else "assistant", "content": "w " * 60} for i in range(40)]
    gen = load_config(
        None, ["generation.max_model_len=4096", "generation.max_context_tokens=3500",
               "generation.reflection_decoding.max_new_tokens=2000"],
    ).generation  # fmt: skip
    pairs = fit_context(_WordEngine(), ctx, gen)
    evaluation = fit_context(_WordEngine(), ctx, gen, refine=False)
    assert len(evaluation) > len(pairs)  # the refinement budget binds the pairs only
    assert _WordEngine().count_tokens([{"content": TASK_PROMPT}, *evaluation]) <= 3500
    longer = "x " * 1500
    shorter = fit_context(_WordEngine(), ctx, gen, system_prompt=longer, refine=False)
    assert _WordEngine().count_tokens([{"content": longer}, *shorter]) <= 3500
    assert len(shorter) < len(evaluation)


def test_a_shorter_prompt_answers_the_same_dialogue_as_p_task():
    """The vanilla prompt (63 tokens against P_task's 213 on SmolLM2) kept more old turns at
    the demo's 464-token budget: Table 2's and Table 5's vanilla rows answered longer
    histories than the P_task rows they are compared with."""
    from esevo_ray.config import load_config
    from esevo_ray.generation.pipeline import task_request
    from esevo_ray.prompts import TASK_PROMPT, VANILLA_PROMPT

    ctx = [{"role": "user" if i % 2 == 0 else "assistant", "content": "w " * 20} for i in range(41)]
    budget = len(TASK_PROMPT.split()) + 100  # P_task and five turns
    gen = load_config(None, [f"generation.max_context_tokens={budget}"]).generation
    row = {"context": ctx}
    task = task_request(_WordEngine(), gen, row, TASK_PROMPT)
    vanilla = task_request(_WordEngine(), gen, row, VANILLA_PROMPT)
    assert len(task) == len(vanilla) == 1 + 5
    assert task[1:] == vanilla[1:] and vanilla[0]["content"] == VANILLA_PROMPT
    longer = "x " * (len(TASK_PROMPT.split()) + 40)  # keeps what fits beside it
    assert len(task_request(_WordEngine(), gen, row, longer)) == 1 + 3
    # Where P_task alone fills the budget, the error says so, not the refinement's numbers.
    tight = load_config(None, ["generation.max_context_tokens=20"]).generation
    with pytest.raises(ValueError) as e:
        task_request(_WordEngine(), tight, row, VANILLA_PROMPT)
    said = str(e.value)
    assert f"the task request takes {len(TASK_PROMPT.split()) + 1} tokens" in said
    assert "fit under as well, P_task" in said and "refinement" not in said


def test_config_rejects_context_longer_than_model():
    import pytest

    from esevo_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="must not exceed max_model_len"):
        load_config(None, ["generation.max_model_len=512", "generation.max_context_tokens=500"])


def test_bench_steady_state_excludes_the_first_batch():
    from esevo_ray.generation.bench import steady

    out = steady([(10.0, 100), (12.0, 50), (14.0, 50)])
    assert out == {"startup_s": 10.0, "tok_per_s": 25.0, "total_tok_per_s": 200 / 14}


@pytest.mark.parametrize(
    "refined",
    ["N/A", "No refinement needed.", "...", "Same as the original response.", "(unchanged)",
     "No changes are needed.", "Keep it as is.", "None"],
)  # fmt: skip
def test_a_refinement_that_says_none_is_needed_is_no_response(refined):
    """Small models scoring their reply 5/5 write this in place of a response: it became the
    chosen response, and the SFT term trained the next model to say it."""
    rejected, golden = "That sounds really hard. Have you told anyone?", "That must hurt."
    assert choose(refined, rejected, golden, 2.0) == (golden, "golden_unchanged")


@pytest.mark.parametrize(
    "refined", ["No worries, I am here.", "None of this is your fault.", "Keep going, you can."]
)
def test_a_response_that_starts_like_no_refinement_is_one(refined):
    assert choose(refined, "That sounds hard.", "That must hurt so much.", 3.0)[1] == "refined"


@pytest.mark.parametrize(
    "refined",
    ["Keep the original response.", "None needed.", "Not needed.", "No need to change.",
     "N/A - the response is appropriate.", "The original response is already appropriate.",
     "The reply is fine as it is.", "The response is already good; no refinement is necessary.",
     "Keep it as it is, the reply is supportive.", "The response does not need refinement.",
     "This response needs no changes.", "Nothing needs to be changed.", "Leave it as is.",
     "It's fine as it is.", "The response looks good.", "The original is fine."],
)  # fmt: skip
def test_a_short_refinement_about_the_response_is_no_response(refined):
    """Said otherwise than the phrasings above: each was kept as `refined`, so DPO preferred
    a remark about the reply to a reply."""
    rejected, golden = "That sounds really hard. Have you told anyone?", "That must hurt."
    assert choose(refined, rejected, golden, 3.0) == (golden, "golden_unchanged")


@pytest.mark.parametrize(
    "refined",
    ["No need to apologize, I am here for you.", "Keep it up, you are doing great!",
     "No apology needed, I am happy to listen.", "It is good that you reached out.",
     "Life is hard enough as it is. What would help most right now?",
     "It is not necessary to have all the answers right now.",
     "An apology is not required. I am glad you told me.",
     "There is no need to change who you are for anyone.",
     "Your initial response of anger is completely normal.",
     "Your answer was fine, nobody expects you to know everything."],
)  # fmt: skip
def test_a_reply_that_sounds_like_a_remark_on_the_response_is_one(refined):
    """None of ESConv's 8,166 supporter turns of up to 15 words reads as a remark."""
    rejected = "That sounds really hard. Have you told anyone about how you feel?"
    assert choose(refined, rejected, "That must hurt so much, I am sorry.", 3.0)[1] == "refined"
