"""What a multimodal model with a ``language_model`` attribute forwards to it, so that transformers' embedding
utilities (``resize_token_embeddings``, tying) and reasonseg's decoding loop work on the whole model."""

from __future__ import annotations

from torch import nn


class LanguageModelDelegation:
    language_model: nn.Module

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    @property
    def decoder(self) -> nn.Module:
        """The language model without its head; its output is the hidden state after the final norm."""
        return self.language_model.get_decoder()
