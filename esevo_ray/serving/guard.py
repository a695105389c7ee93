"""Crisis guard: a message that indicates suicidal intent or self-harm gets crisis resources.

The patterns are a small, deliberately conservative list: first-person statements of
wanting to die, to kill or hurt oneself, or to end one's life, and the words suicide,
suicidal, self-harm and overdose. Figures of speech that only borrow the words ("this
deadline is killing me", "my feet are killing me", "I'm dying to see it") do not match,
because every pattern needs the reflexive object ("myself") or an explicit wish to die.
A match on the user's message never depends on what the model replies. The model's own
reply is checked too, when it ends: a reply that matches gets the resources after it. Every
event is logged without the text.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

CRISIS_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        # "suicide", "suicidal", "commit suicide", "suicidal thoughts"
        "suicide": r"\bsuicid(?:e|al|ality)\b",
        # "kill myself", "killing myself", "hurt myself", "cut myself", "harm myself"
        "self_harm_verb": r"\b(?:kill|killing|hurt|hurting|harm|harming|cut|cutting|"
        r"starve|starving|hang|hanging|shoot|shooting)\s+my\s*self\b",
        # "self-harm", "self harming", "self-injury"
        "self_harm_noun": r"\bself[\s-]?(?:harm|harming|injur(?:y|e|ing)|mutilat\w*)\b",
        # "end my life", "take my own life", "ending it all"
        # ("take my life in a new direction" stays out: "take" needs "my own life")
        "end_life": r"\b(?:(?:end|ending)\s+(?:my\s+(?:own\s+)?life|it\s+all)|"
        r"(?:take|taking)\s+my\s+own\s+life)\b",
        # "I want to die", "I wanna die", "I wish I were dead", "better off dead"
        "want_to_die": r"\b(?:want(?:ed)?\s+to|wanna|planning\s+to|wish\s+i\s+could)\s+die\b",
        "wish_dead": r"\b(?:wish\s+i\s+(?:was|were)\s+dead|better\s+off\s+dead)\b",
        # "no reason to live", "don't want to live / be alive anymore"
        "no_reason_to_live": r"\b(?:no\s+(?:reason|point)\s+(?:to|in)\s+(?:live|living)|"
        r"(?:do\s*n[o']?t|not)\s+want\s+to\s+(?:live|be\s+alive|wake\s+up))\b",
        # "overdose", "overdosing"
        "overdose": r"\boverdos(?:e|ed|ing)\b",
    }.items()
}


def _normalise(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


def crisis_match(text: str) -> str | None:
    """The name of the first crisis pattern `text` matches, or None."""
    text = _normalise(text)
    for name, pattern in CRISIS_PATTERNS.items():
        if pattern.search(text):
            return name
    return None


def check_messages(messages: list[dict]) -> str | None:
    """The crisis pattern matched by the latest user message, or None."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return crisis_match(str(m.get("content", "")))
    return None


def guarded_reply(reply: str, crisis_text: str) -> str:
    """The reply with the crisis resources first, whatever the model said."""
    return f"{crisis_text}\n\n{reply}".strip() if reply.strip() else crisis_text


def log_event(pattern: str, where: str, model: str) -> None:
    """Log a crisis event: pattern name, route and model, never the message text."""
    logger.warning("crisis guard triggered: pattern=%s route=%s model=%s", pattern, where, model)


class ReplyGuard:
    """The guard over one reply, sent whole or streamed; a stream's chunks join to the whole.

    The latest user message decides before generation: the resources come first (a stream's
    first content chunk). Otherwise the model's reply is checked when it ends, and a match
    appends the resources (a stream's last content chunk, after the model's tokens).
    """

    def __init__(self, turns: list[dict], crisis_text: str, route: str, model: str):
        self.crisis_text, self.route, self.model = crisis_text, route, model
        self.pattern = check_messages(turns)
        if self.pattern is not None:
            log_event(self.pattern, route, model)

    @property
    def fired(self) -> bool:
        return self.pattern is not None

    def prefix(self) -> str:
        """What goes before the model's first token."""
        return f"{self.crisis_text}\n\n" if self.fired else ""

    def suffix(self, reply: str) -> str:
        """What goes after the model's last token (call once, with the whole reply)."""
        if self.fired:
            return ""
        self.pattern = crisis_match(reply)
        if self.pattern is None:
            return ""
        log_event(self.pattern, f"{self.route}:reply", self.model)
        return f"\n\n{self.crisis_text}"

    def whole(self, reply: str) -> str:
        """The guarded reply in one piece (what a stream's chunks join to, stripped)."""
        first = self.prefix()
        return f"{first}{reply}{self.suffix(reply)}".strip()
