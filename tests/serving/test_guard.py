"""The crisis guard's pattern list: positives trigger, figures of speech do not."""

from __future__ import annotations

import logging

import pytest

from esevo_ray.serving.guard import check_messages, crisis_match, guarded_reply, log_event

POSITIVES = [
    "I want to kill myself.",
    "Sometimes I think about killing myself",
    "I've been cutting myself again",
    "i keep hurting myself when i'm alone",
    "I feel suicidal",
    "I'm thinking about suicide",
    "I want to die",
    "I just wanna die",
    "I wish I were dead",
    "everyone would be better off dead without me... I mean me being dead",
    "I'm going to end my life",
    "I have thought about taking my own life",
    "I don\u2019t want to live anymore",
    "There is no reason to live",
    "I've been self-harming for months",
    "I am planning to overdose on my pills",
    "I DON'T WANT TO BE ALIVE",
]

NEGATIVES = [
    "This deadline is killing me.",
    "My feet are killing me after that hike",
    "I could kill for a pizza right now",
    "I'm dying to see the new movie",
    "I almost died laughing at his joke",
    "My phone battery died again",
    "That exam killed me",
    "I want to live a calmer life",
    "I'm dead tired after work",
    "She's killing it at her new job",
    "I hurt my knee playing football",
    "I want to end this relationship",
    "My cat died last year and I still miss her",
    "I want to take my life in a new direction",
]


@pytest.mark.parametrize("text", POSITIVES)
def test_positive_examples_trigger(text):
    assert crisis_match(text) is not None, text


@pytest.mark.parametrize("text", NEGATIVES)
def test_negative_examples_do_not_trigger(text):
    assert crisis_match(text) is None, text


def test_only_the_latest_user_message_counts():
    earlier = [
        {"role": "user", "content": "I want to die"},
        {"role": "assistant", "content": "I'm here with you."},
    ]
    assert check_messages(earlier) == "want_to_die"
    later = [*earlier, {"role": "user", "content": "Thank you, I called the helpline."}]
    assert check_messages(later) is None
    # An assistant turn quoting the words does not count.
    assert check_messages([{"role": "assistant", "content": "kill myself"}]) is None


def test_a_message_sent_in_text_parts_is_read_as_its_words():
    from esevo_ray.serving.protocol import ChatMessage

    parts = [{"type": "text", "text": "I feel hopeless"},
             {"type": "text", "text": "suicide seems like the only way"}]  # fmt: skip
    message = ChatMessage(role="user", content=parts)
    assert message.text() == "I feel hopeless\nsuicide seems like the only way"
    assert check_messages([{"role": "user", "content": message.text()}]) is not None


def test_reply_always_carries_the_resources():
    text = "Call the helpline."
    assert guarded_reply("I understand.", text).startswith(text)
    assert guarded_reply("", text) == text


def test_event_is_logged_without_the_message(caplog):
    message = "I want to kill myself tonight"
    pattern = crisis_match(message)
    with caplog.at_level(logging.WARNING, logger="esevo_ray.serving.guard"):
        log_event(pattern, "chat", "m1")
    assert "pattern=self_harm_verb" in caplog.text and "model=m1" in caplog.text
    assert "tonight" not in caplog.text and message not in caplog.text
