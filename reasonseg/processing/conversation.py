"""Conversation templates: how turns become the prompt string the language model was trained on."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

DEFAULT_IMAGE_TOKEN = "<image>"
IMAGE_START_TOKEN = "<im_start>"
IMAGE_END_TOKEN = "<im_end>"


@dataclass(frozen=True)
class ConversationTemplate:
    """A named prompt format.

    style ``"two_separators"`` (LLaVA v1): ``system + sep + "USER: q" + sep + "ASSISTANT: a" + sep2 + ...``; the
    open assistant turn ends in ``"ASSISTANT:"``.
    style ``"llama_2"``: ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST] {a} </s><s>[INST] {q} [/INST]``.
    """

    name: str
    system: str
    roles: tuple[str, str]
    style: str
    sep: str
    sep2: str

    def render(self, turns: list[tuple[str, str | None]]) -> str:
        """turns: ``[(user_text, assistant_text_or_None), ...]``; a None answer leaves the assistant turn open."""
        if self.style == "two_separators":
            text = self.system + self.sep
            for user, assistant in turns:
                text += f"{self.roles[0]}: {user}{self.sep}"
                if assistant is None:
                    text += f"{self.roles[1]}:"
                else:
                    text += f"{self.roles[1]}: {assistant}{self.sep2}"
            return text
        if self.style == "llama_2":
            text = ""
            for index, (user, assistant) in enumerate(turns):
                if index == 0:
                    user = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{user}"
                text += f"{self.sep}[INST] {user} [/INST]"
                if assistant is not None:
                    text += f" {assistant} {self.sep2}"
            return text[len(self.sep) :] if text.startswith(self.sep) else text
        raise ValueError(f"unknown template style {self.style!r}")


TEMPLATES = {
    "llava_v1": ConversationTemplate(
        name="llava_v1",
        system="A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        roles=("USER", "ASSISTANT"),
        style="two_separators",
        sep=" ",
        sep2="</s>",
    ),
    "llava_llama_2": ConversationTemplate(
        name="llava_llama_2",
        system="You are a helpful language and vision assistant. You are able to understand the visual content "
        "that the user provides, and assist the user with a variety of tasks using natural language.",
        roles=("USER", "ASSISTANT"),
        style="llama_2",
        sep="<s>",
        sep2="</s>",
    ),
}


def get_template(name: str) -> ConversationTemplate:
    if name not in TEMPLATES:
        raise InputError(f"unknown conversation template {name!r}; choose one of: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


IMAGE_PLACEMENTS = ("before_text", "after_text")


def check_image_placement(placement: str) -> None:
    if placement not in IMAGE_PLACEMENTS:
        raise InputError(f"image_placement {placement!r}: use one of {', '.join(IMAGE_PLACEMENTS)}")


def place_image(text: str, placement: str = "before_text") -> str:
    """The user's first message with the image placeholder in front of it (LLaVA's and LISA's "<image>\\n...") or
    after it; a message that already holds the placeholder keeps it where the user wrote it."""
    if DEFAULT_IMAGE_TOKEN in text:
        return text
    return f"{text}\n{DEFAULT_IMAGE_TOKEN}" if placement == "after_text" else f"{DEFAULT_IMAGE_TOKEN}\n{text}"


def with_image_placeholder(text: str, use_im_start_end: bool, placement: str = "before_text") -> str:
    """Put the image placeholder into the user's first message (unless they wrote it), as LISA's chat does."""
    text = place_image(text, placement)
    if use_im_start_end:
        text = text.replace(DEFAULT_IMAGE_TOKEN, IMAGE_START_TOKEN + DEFAULT_IMAGE_TOKEN + IMAGE_END_TOKEN)
    return text
