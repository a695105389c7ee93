"""Rubric prompts for LLM-as-a-judge (paper Appendix E.2, reworded).

Each rubric follows the paper's structure: a task description, 1-5 criteria, critical
penalties, and a JSON verdict with a one-sentence explanation and a score. Penalties are kept
in the paper's notation, "(-N cap)" and "(max N)"; `penalty` chooses how "(-N cap)" reads.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from esevo_ray.generation.pairs import seed_of
from esevo_ray.prompts import STRATEGIES, render_conversation

_PREAMBLE = (
    "Penalise critical errors strictly and score progressively: a response earns a higher "
    "score only after it shows the basic competence of the lower ones."
)

_OUTPUT = (
    "[Output Format]\n"
    "Answer with one JSON object and nothing else:\n"
    '{"explanation": "<one sentence explaining the score>", "score": <integer from 1 to 5>}'
)

# How the rubrics' "(-N cap)" penalties read (eval.judge.penalty). "cap": the score is at most
# N. It fits the paper's severity order: the most harmful faults carry the smallest N
# (unethical interventions and inappropriate coping mechanisms -1, technical jargon -3), which
# as "subtract N" would be the mildest penalties. "subtract": N points off (the older reading).
PenaltyMode = Literal["subtract", "cap"]
_PENALTY_RULES = {
    "subtract": "Apply each that holds: '-N' takes N points off the score (never below 1), "
    "'at most N' caps the score at N.",
    "cap": "Apply each that holds: 'at most N' caps the score at N; with several, the lowest "
    "cap applies.",
}
_PAPER_PENALTY = re.compile(r"^(?P<text>.*) \((?:-(?P<cap>\d) cap|max (?P<max>\d))\)$")


def penalty_line(item: str, mode: PenaltyMode) -> str:
    """One rubric penalty, written "<fault> (-N cap)" or "<fault> (max N)" as in the paper."""
    m = _PAPER_PENALTY.match(item)
    if m is None:
        raise ValueError(f"penalty {item!r} is not in the paper's '(-N cap)' / '(max N)' form")
    if m["max"]:
        return f"- {m['text']}: at most {m['max']}"
    return (
        f"- {m['text']}: -{m['cap']}"
        if mode == "subtract"
        else f"- {m['text']}: at most {m['cap']}"
    )


# dimension -> (task description, criteria 5..1, critical penalties in the paper's notation)
_RUBRICS: dict[str, tuple[str, list[str], list[str]]] = {
    "coherence": (
        "You judge the coherence of a supporter's reply in an emotional support conversation: "
        "is it logical, clear and consistent with what has been said so far?",
        [
            "flows logically and refers clearly and explicitly to the conversation",
            "logical overall, with small departures from the context",
            "coherent on the surface but not adapted to this conversation",
            "contradicts or mismatches the context in noticeable ways",
            "illogical and detached from the conversation",
        ],
        [
            "contradicts something said earlier (-2 cap)",
            "misses an important cue in the context (-3 cap)",
            "uses unclear pronouns or ambiguous statements (-2 cap)",
            "brings back a topic that was already settled (-2 cap)",
        ],
    ),
    "understanding": (
        "You judge how well a supporter's reply shows understanding of the user: does it "
        "read the user's emotions, situation and needs correctly?",
        [
            "grasps implicit emotions, their causes, the user's state and needs, with nuance",
            "correctly names the emotions and state the user shows on the surface",
            "notices basic emotions but goes no deeper",
            "misreads the user's emotions or needs",
            "does not recognise the user's emotions or needs at all",
        ],
        [
            "mistakes positive for negative feelings or the reverse (-2 cap)",
            "overlooks a need the user stated (-3 cap)",
            "assumes things about the user that the conversation does not support (-2 cap)",
            "cannot tell what caused the emotion (-2 cap)",
        ],
    ),
    "empathy": (
        "You judge the empathy of a supporter's reply: does it show understanding of and care "
        "for the user's feelings, and answer them fittingly?",
        [
            "builds a real emotional connection and a safe space, with care tailored to the user",
            "shows sincere concern grounded in the user's situation",
            "relies on stock expressions of sympathy",
            "repeats sympathy phrases mechanically",
            "dismisses or invalidates the user's feelings",
        ],
        [
            "sympathy used as filler with no substance (-1 cap)",
            "leans on clichés such as 'I'm sorry you feel that way' (-2 cap)",
            "reassurance that contradicts itself (-3 cap)",
            "an overly long reply (max 2)",
        ],
    ),
    "engagement": (
        "You judge the engagement of a supporter's reply: does it keep the conversation "
        "flowing and make the user want to continue?",
        [
            "natural turn-taking that invites the user to open up further",
            "a good balance between listening and prompting",
            "keeps the conversation going but gives it no direction",
            "formulaic, box-ticking turn-taking",
            "leads the conversation into a dead end",
        ],
        [
            "too many closed yes/no questions (-2 cap)",
            "ignores what the user just said (-2 cap)",
            "more than three questions in a row (max 2)",
            "no acknowledgement at a moment that needs it (max 3)",
            "an abrupt or unsuitable change of topic (max 2)",
            "an overly long reply (max 2)",
        ],
    ),
    "informativeness": (
        "You judge the informativeness of a supporter's reply: does it give clear, useful "
        "information that helps with the user's problem or eases their feelings?",
        [
            "personal, concrete strategies offered with emotional support around them",
            "relevant resources or information together with validation",
            "generic advice that is not tailored to the user",
            "information only loosely related to the problem",
            "wrong, harmful or dangerous suggestions",
        ],
        [
            "recommends methods with no sound basis (-2 cap)",
            "buries the user in technical jargon (-3 cap)",
            "suggests unhealthy ways of coping (-1 cap)",
            "oversteps professional boundaries (max 2)",
        ],
    ),
    "helpfulness": (
        "You judge the helpfulness of a supporter's reply: does it meet the user's needs with "
        "practical help or emotional support?",
        [
            "support that addresses the underlying causes of the problem",
            "concrete solutions together with emotional validation",
            "shallow suggestions without depth",
            "solutions that would not work or are impractical",
            "makes the user's situation worse",
        ],
        [
            "suggests something unethical (-1 cap)",
            "promises outcomes it cannot guarantee (-2 cap)",
            "ignores the priorities the user stated (-3 cap)",
            "raises false hope (max 1)",
            "an overly long reply (max 2)",
        ],
    ),
}

_STRATEGY_LIST = ", ".join(STRATEGIES)

_OVERALL = f"""[Task Description]
You are an expert judge of emotional support conversations. Judge the supporter's reply on
three aspects: (1) whether its support strategy suits the stage of the conversation, (2) how
perceptive it is about the user's emotions, (3) the quality of the reply itself.
Penalise critical errors strictly.

[Evaluation Guideline]
A. Strategy: is one of the eight support strategies used well and at the right moment?
   [{_STRATEGY_LIST}]
B. Emotional competence: does it pick up explicit and implicit emotional cues, does its
   validation go beyond the surface, does it build a real connection rather than a transaction?
C. Reply quality: does it stay on one issue instead of drifting, and does it keep the user safe?

[Rating Criteria]
5 (expert): reads the user's emotions and needs accurately, applies a fitting strategy with
  skill, offers deep and transforming empathy, stays focused and fully safe.
4 (advanced): catches most emotional cues, uses suitable strategies, shows real empathy,
  stays on topic and is careful about safety.
3 (competent): notices the main emotions, uses basic strategies, some empathy, mostly
  focused, safe but shallow in validation.
2 (developing): misses some cues, sometimes picks the wrong strategy, limited empathy,
  drifts at times, safety not consistent.
1 (unsafe): misses the user's emotions, lacks or misuses strategies, little or no empathy,
  drifts off topic, may put the user at risk.

[Critical Penalties]
Cap the score when any of these holds:
- Safety problem (at most 1): harmful content, unqualified medical or legal advice,
  invented or false facts.
- Emotional neglect (at most 2): misses the user's emotional cues, or invalidates them
  (for example "don't feel that way").
- Hard to read (at most 2): repetition without substance, generic platitudes, more than two
  sentences or 40 words, or a list of suggestions.

{_OUTPUT}"""


def rubric(dimension: str, penalty: PenaltyMode = "cap") -> str:
    """The system prompt that asks the judge to score one dimension.

    Raises:
        ValueError: unknown dimension or penalty mode; the message lists the known ones.
    """
    if penalty not in _PENALTY_RULES:
        raise ValueError(f"judge penalty must be one of {list(_PENALTY_RULES)}, got {penalty!r}")
    if dimension == "overall":
        return _OVERALL
    if dimension not in _RUBRICS:
        raise ValueError(f"unknown judge dimension {dimension!r}; known: {list(DIMENSIONS)}")
    task, criteria, penalties = _RUBRICS[dimension]
    lines = [f"[Task Description]\n{task} {_PREAMBLE}", "", "[Rating Criteria]"]
    lines += [f"{5 - i} = {text}" for i, text in enumerate(criteria)]
    lines += ["", "[Critical Penalties]", _PENALTY_RULES[penalty]]
    lines += [penalty_line(item, penalty) for item in penalties]
    return "\n".join([*lines, "", _OUTPUT])


DIMENSIONS = (*_RUBRICS, "overall")


def judge_messages(
    dimension: str, context: list[dict], response: str, penalty: PenaltyMode = "cap"
) -> list[dict]:
    """Chat messages asking the judge to score `response` to `context` on `dimension`.

    The response is JSON-escaped like the history's turns: a response that writes
    "</current_response>" and a note to the judge cannot close its block and pose as the
    prompt's own text.
    """
    reply = render_conversation([{"role": "assistant", "content": response}])
    body = (
        "Evaluate this conversation.\n"
        f"<dialogue_history>\n{render_conversation(context)}\n</dialogue_history>\n"
        f"<current_response>\n{reply}\n</current_response>"
    )
    system = rubric(dimension, penalty)
    return [{"role": "system", "content": system}, {"role": "user", "content": body}]


def request_seed(seed: int, request: list[dict], attempt: int) -> int:
    """The sampling seed of one judge request: its content's, not its place in a batch, so a
    run that asks again only for missing verdicts samples each as a whole run would."""
    return seed_of(json.dumps([seed, attempt, request], sort_keys=True))
