"""Prompt templates.

``r1_zero`` is the training template of DeepSeek-R1-Zero (paper, Table 1): it asks for reasoning
inside ``<think>`` and the answer inside ``<answer>`` and nothing else, "to accurately observe the
model's natural progression during the RL process". ``chat`` uses the tokenizer's own chat template
(instruct models, the tiny model, and R1's later stages). ``plain`` feeds the prompt as is.
"""

from __future__ import annotations

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {prompt}. Assistant:"
)

TEMPLATES = ("r1_zero", "chat", "plain")


def check_template(template: str, tokenizer=None) -> None:
    """Fail early, naming the option, when a template cannot be applied with this tokenizer."""
    if template not in TEMPLATES and "{prompt}" not in template:
        raise ValueError(
            f"template={template!r}: expected one of {TEMPLATES} or a format string containing '{{prompt}}'"
        )
    if template == "chat" and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"template='chat' but the tokenizer {name!r} has no chat_template; "
            "use template='r1_zero' or 'plain' (base models), or give a tokenizer with a chat template"
        )


def render_prompt(prompt: str | list[dict], template: str, tokenizer=None, system_prompt: str | None = None) -> str:
    """The text the policy is conditioned on (the completion starts right after it).

    ``prompt`` is a question string or, with ``chat``, a list of chat messages.
    """
    check_template(template, tokenizer)
    if template == "chat":
        messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if system_prompt and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": system_prompt}] + messages
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        raise ValueError(f"template={template!r} needs a string prompt, got chat messages; use template='chat'")
    text = prompt.strip()
    if template == "plain":
        return text
    fmt = R1_ZERO_TEMPLATE if template == "r1_zero" else template
    # the paper's template adds its own final period after the question
    if fmt is R1_ZERO_TEMPLATE:
        text = text.rstrip(".")
    return fmt.format(prompt=text)
