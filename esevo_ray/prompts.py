"""Prompts (paper Appendix E.1): the task prompt P_task and the reflection prompts.

P_task, the strategy list and the vanilla prompt are the paper's words; the JSON-answer
prompts (self-reflection, refinement, reflection) are reworded to ask for strict JSON.
Prompt builders are pure functions from a context row to chat messages, so SFT, generation,
evaluation and serving all speak to the model the same way.
"""

from __future__ import annotations

import json
from typing import Literal, get_args

# The eight ESConv strategies (Liu et al., 2021) as Appendix E.1 describes them.
STRATEGIES: dict[str, str] = {
    "Question": "Asking for information related to the problem to help the seeker articulate "
    "the issues that they face.",
    "Affirmation and Reassurance": "Offering reassurance and affirming the help-seeker's "
    "feelings or experiences.",
    "Reflection of Feelings": "Articulating and describing the seeker's feelings.",
    "Information": "Providing useful information, such as data, facts, opinions, or "
    "resources, or answering questions.",
    "Providing Suggestions": "Offering suggestions on how to approach the issue, without "
    "overstepping or telling them what to do.",
    "Restatement or Paraphrasing": "Rephrasing the help-seeker's statements more concisely to "
    "help them see the situation clearly.",
    "Self-disclosure": "Sharing similar experiences or emotions to express empathy with the "
    "help-seeker.",
    "Others": "Exchanging pleasantries or offering other emotional support.",
}

_STRATEGY_LINES = "\n".join(f"{i}. {k}: {v}" for i, (k, v) in enumerate(STRATEGIES.items(), 1))

# Appendix E.1, "Prompt for vanilla" (Table 3's first row).
VANILLA_PROMPT = (
    "You are an emotional support expert.\n"
    "You can use the following strategies to engage with users:\n"
    f"[{', '.join(STRATEGIES)}]"
)

# P_task, Appendix E.1 "Prompt for w/strategy": used for SFT, rejected responses, evaluation
# and serving. Nothing asks for a short answer; the rejected responses, Appendix A's length
# rule and Table 3 depend on that.
PAPER_TASK_PROMPT = (
    "You are an emotional support expert. You can use the following strategies to engage "
    f"with users:\n{_STRATEGY_LINES}"
)
# Not in the paper: P_task plus a request for one short message (this project's earlier P_task;
# small models answer at length without it).
SHORT_TASK_PROMPT = (
    f"{PAPER_TASK_PROMPT}\nReply to the user with one short, natural supportive message."
)

TaskStyle = Literal["paper", "short"]
TASK_STYLES: tuple[str, ...] = get_args(TaskStyle)
TASK_PROMPTS: dict[str, str] = {"paper": PAPER_TASK_PROMPT, "short": SHORT_TASK_PROMPT}
TASK_PROMPT = PAPER_TASK_PROMPT


def task_prompt(style: str = "paper") -> str:
    """P_task of a style: "paper" (Appendix E.1's wording) or "short" (asks for one short
    message).

    Raises:
        ValueError: an unknown style, naming the allowed ones.
    """
    if style not in TASK_PROMPTS:
        raise ValueError(f"task prompt style must be one of {list(TASK_STYLES)}, got {style!r}")
    return TASK_PROMPTS[style]


SELF_REFLECTION_PROMPT = (
    f"{TASK_PROMPT}\n\n"
    "Before you answer, work through these steps:\n"
    "1. Understand the user: their profile, traits, emotional needs and the preferences they "
    "reveal in the conversation.\n"
    "2. Select a strategy that fits those needs and preferences.\n"
    "3. Respond with a message that uses the selected strategy.\n"
    'Answer with a JSON object: {"strategy": <one of the strategies>, "text": <your response>}'
)

REFLECTION_KEYS = ("user_profile", "user_emotion", "user_personality", "user_intention")

# The chosen-response prompt (Appendix E.1): understand, evaluate, give feedback, refine.
REFINE_PROMPT = (
    "You are an emotional support expert. You can use these strategies to engage with users:\n"
    f"{_STRATEGY_LINES}\n\n"
    "Your task is to evaluate the target supporter response to the conversation and refine it:\n"
    "1. Understand the user: their profile, traits, emotional needs and the preferences they "
    "reveal in the conversation.\n"
    "2. Evaluate the response: rate it from 1 to 5 for how well it meets the user's needs, "
    "fits their preferences and gives suitable emotional support.\n"
    "3. Give feedback: name the weaknesses of the response (tone, empathy, relevance) and how "
    "to improve it.\n"
    "4. Refine the response: write a better version that fits the user's emotional needs and "
    "preferences.\n\n"
    "Answer with one JSON object inside a markdown code block, exactly these keys:\n"
    "```json\n"
    '{"understanding": {"user_profile": <profile of the user>, '
    '"user_emotion": <emotion of the user>, '
    '"user_personality": <personality of the user, e.g. MBTI>, '
    '"user_intention": <intention of the user>}, '
    '"evaluation_score": <1-5>, '
    '"feedback": <weaknesses of the response and how to improve it>, '
    '"refined_response": <your refined response (short!!!)>}\n'
    "```"
)

# Two-step mode, Eq. 4: reflect on the user only.
REFLECT_PROMPT = (
    "You are an emotional support expert. Read the conversation and understand the user: "
    "their profile, traits, emotional needs and the preferences they reveal.\n"
    "Answer with one JSON object inside a markdown code block, exactly these keys:\n"
    "```json\n"
    '{"user_profile": <profile of the user>, "user_emotion": <emotion of the user>, '
    '"user_personality": <personality of the user, e.g. MBTI>, '
    '"user_intention": <intention of the user>}\n'
    "```"
)

# Two-step mode, Eq. 5: refine y given the reflection (u_n, s_n).
REFINE_WITH_REFLECTION_PROMPT = (
    f"{REFINE_PROMPT}\n\nAn analysis of the user is given with the conversation; use it for step 1."
)


def render_conversation(context: list[dict]) -> str:
    """The dialogue as plain text, one `user:` / `supporter:` line per turn.

    Turn texts are JSON-escaped, so text inside a user message cannot close the block or
    pose as a new instruction line.
    """
    names = {"user": "user", "assistant": "supporter"}
    lines = [
        f"{names.get(m['role'], m['role'])}: {json.dumps(m['content'], ensure_ascii=False)}"
        for m in context
    ]
    return "\n".join(lines)


def task_messages(context: list[dict], system: str = TASK_PROMPT) -> list[dict]:
    """P_task || C_n as chat messages: the system prompt, then the dialogue turns."""
    return [{"role": "system", "content": system}, *context]


def refine_messages(
    context: list[dict], response: str, reflection: dict | None = None
) -> list[dict]:
    """The chosen-response request for response y to context C_n (joint or Eq. 5)."""
    parts = [f"<conversation>\n{render_conversation(context)}\n</conversation>"]
    if reflection is not None:
        parts.append(
            f"<user_analysis>\n{json.dumps(reflection, ensure_ascii=False)}\n</user_analysis>"
        )
    parts.append(
        f"<target_response>\n{json.dumps(response, ensure_ascii=False)}\n</target_response>"
    )
    system = REFINE_PROMPT if reflection is None else REFINE_WITH_REFLECTION_PROMPT
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(parts)}]


def reflect_messages(context: list[dict]) -> list[dict]:
    """The user-reflection request (Eq. 4)."""
    body = f"<conversation>\n{render_conversation(context)}\n</conversation>"
    return [{"role": "system", "content": REFLECT_PROMPT}, {"role": "user", "content": body}]


def _text_field(max_length: int) -> dict:
    return {"type": "string", "maxLength": max_length}


# JSON schemas for engines that constrain decoding (`generation.guided_json`): small models
# then emit parseable answers unless the token budget cuts them off (the Appendix A retry
# and fallback rules still apply). Field caps keep a whole answer within ~250 tokens.
REFLECT_SCHEMA = {
    "type": "object",
    "properties": {k: _text_field(100) for k in REFLECTION_KEYS},
    "required": list(REFLECTION_KEYS),
}
REFINE_SCHEMA = {
    "type": "object",
    "properties": {
        "understanding": REFLECT_SCHEMA,
        "evaluation_score": {"type": "integer", "minimum": 1, "maximum": 5},
        "feedback": _text_field(150),
        "refined_response": _text_field(300),
    },
    "required": ["understanding", "evaluation_score", "feedback", "refined_response"],
}
