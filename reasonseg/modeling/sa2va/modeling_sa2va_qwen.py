"""Sa2VA of the Qwen-VL family (``Sa2VAChatModelQwen``) as a reasonseg model, with the interface of
:class:`~reasonseg.modeling.sa2va.Sa2VAForCausalLM`, so ``Segmenter``, chat sessions, the CLI and the server run it
unchanged.

    image -> Qwen-VL image processor (dynamic resolution) -> Qwen-VL vision tower + patch merger --+
                                                                                                     +-> splice
    prompt -> tokens (<|vision_start|> placeholder <|vision_end|>) -----------------------------------+     |
                                 M-RoPE positions (the Qwen-VL model's own ``get_rope_index``) ------------+
    image -> 1024x1024 -> SAM2 image encoder     Qwen-VL language model -> tokens; state at each [SEG]
                               +------------> SAM2 mask decoder <---- text_hidden_fcs <------------+

The Qwen-VL part is transformers' own ``Qwen2_5_VLForConditionalGeneration`` or ``Qwen3VLForConditionalGeneration``
(``vlm``), used piecewise: its vision tower encodes the image once, its language model runs inside reasonseg's splice
and KV-cached decoding loop with 3-D (temporal, height, width) rope positions. Qwen3-VL's vision tower also gives
"deepstack" features (one set per chosen vision layer) that its language model adds to the image positions after
its first decoder layers: they ride with the spliced prompt (``SplicedInputs.decoder_kwargs``) into the prefill only. The SAM2 side, the [SEG] projection, the splice and the losses are
the ones the InternVL-family Sa2VA uses.
"""


from dataclasses import dataclass

import torch
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel, Sam2Model

from ...errors import UnsupportedError
from ..multimodal_inputs import SplicedInputs
from ..placement import execution_device, parameter_dtype
from ..segmentation_pass import ReasonSegOutput, SegmentationPass
from ..seg_projection import SegProjection
from .configuration_sa2va_qwen import SUPPORTED_VLM_TYPES, Sa2VAQwenConfig
from .sam2 import Sam2ImageFeatures, Sam2MaskSide


@dataclass
class QwenImageFeatures:
    """Merged patch features of images for the language model: ``embeddings[i]`` ``[N_i, hidden]`` and each
    image's patch grid ``grids[i]`` (temporal, height, width in patches, before merging), which M-RoPE needs.
    Indexing gives one image's features (still a :class:`QwenImageFeatures`)."""

    embeddings: list[torch.Tensor]
    grids: torch.Tensor  # [num_images, 3]
    deepstack: list[torch.Tensor] | None = None  # Qwen3-VL: per image [levels, N_i, hidden]

    def __getitem__(self, index: int) -> "QwenImageFeatures":
        deepstack = None if self.deepstack is None else [self.deepstack[index]]
        return QwenImageFeatures([self.embeddings[index]], self.grids[index : index + 1], deepstack)

    def __len__(self) -> int:
        return len(self.embeddings)

    @classmethod
    def gather(cls, features) -> "QwenImageFeatures":
        """One :class:`QwenImageFeatures` from itself or a list of them (images in order)."""
        if isinstance(features, QwenImageFeatures):
            return features
        parts = list(features)
        deepstack = None if any(f.deepstack is None for f in parts) else [d for f in parts for d in f.deepstack]
        return cls([e for f in parts for e in f.embeddings], torch.cat([f.grids for f in parts]), deepstack)

    def deepstack_inputs(self, image_rows: list[int]) -> list[torch.Tensor] | None:
        """The deepstack features of the images of ``image_rows`` (one image index per conversation that holds an
        image, in batch order), as the language model adds them: one ``[sum N, hidden]`` per level, in the order
        in which a ``[B, T]`` mask enumerates the image positions (row by row)."""
        if self.deepstack is None or not image_rows:
            return None
        levels = self.deepstack[0].shape[0]
        return [torch.cat([self.deepstack[i][level] for i in image_rows]) for level in range(levels)]


def vlm_class_for(vlm_config):
    """transformers' Qwen-VL class for a ``vlm_config``; a one-line error for a family reasonseg does not build."""
    model_type = getattr(vlm_config, "model_type", None)
    if model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration
    if model_type == "qwen3_vl":
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration
    raise UnsupportedError(
        f"Sa2VA's Qwen-VL model {model_type!r} is not supported; supported: {', '.join(SUPPORTED_VLM_TYPES)} "
        "(Sa2VA-Qwen2_5-VL-3B/7B, Sa2VA-Qwen3-VL-4B)"
    )


class Sa2VAQwenPreTrainedModel(PreTrainedModel):
    config: Sa2VAQwenConfig
    base_model_prefix = "sa2va_qwen"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = [
        "Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock",
        "Sam2VisionModel", "Sam2MaskDecoder", "Sam2PromptEncoder",
        "SegProjection",
    ]
    input_modalities = ("image", "text")


class Sa2VAQwenForCausalLM(Sam2MaskSide, SegmentationPass, Sa2VAQwenPreTrainedModel):
    """``vlm``: the whole Qwen-VL model (``vlm.model.visual``, ``vlm.model.language_model``, ``vlm.lm_head``);
    ``sam``: transformers' ``Sam2Model``; ``seg_projection``: ``text_hidden_fcs``."""

    # kept out of 8/4-bit quantisation: the Qwen-VL vision tower (with its merger), SAM2, the [SEG] projection
    # (``text_hidden_fcs``) and ``lm_head``; only the language model's linear layers are quantised
    quantization_skip_modules = ["vlm.model.visual", "sam", "seg_projection", "vlm.lm_head"]
    # device_map="auto": these whole on the first device; the language model and lm_head spread by accelerate
    device_map_pinned_parts = ("vlm.model.visual", "sam", "seg_projection")
    device_map_language_parts = ("vlm.model.language_model", "vlm.lm_head")

    def __init__(self, config: Sa2VAQwenConfig):
        super().__init__(config)
        self.vlm = vlm_class_for(config.vlm_config)(config.vlm_config)
        self.sam = Sam2Model(config.sam_config)
        self.seg_projection = SegProjection(config.vlm_config.text_config.hidden_size, config.seg_embedding_dim)
        self.post_init()

    # ---- the language model, as the decoding loop and the segmentation pass use it ----
    def get_input_embeddings(self):
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.vlm.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.vlm.set_output_embeddings(value)

    @property
    def decoder(self):
        """The Qwen-VL language model without its head (M-RoPE: it takes ``[3, B, T]`` position ids)."""
        return self.vlm.model.language_model

    @property
    def vision_tower(self):
        """The Qwen-VL vision tower with its patch merger (the projector is part of it)."""
        return self.vlm.model.visual

    # ---- image branch ----
    def encode_images(self, pixel_values) -> QwenImageFeatures:
        """Processed images -> :class:`QwenImageFeatures`.

        pixel_values: ``[B, t, h, w, D]`` (the processor's flattened patches of B same-sized images, viewed with
        their patch grid as the shape; see :class:`~reasonseg.processing.sa2va_qwen.Sa2VAQwenProcessor`), or a
        list of such tensors for images of different sizes."""
        if isinstance(pixel_values, (list, tuple)):
            return QwenImageFeatures.gather([self.encode_images(p) for p in pixel_values])
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(0)
        images, t, h, w, width = pixel_values.shape
        tower = self.vision_tower
        grids = torch.tensor([[t, h, w]] * images, dtype=torch.long, device=execution_device(tower))
        patches = pixel_values.reshape(-1, width).to(execution_device(tower), parameter_dtype(tower))
        out = tower(patches, grid_thw=grids)
        merged = out.pooler_output  # [sum N_i, hidden], images in order
        per_image = merged.shape[0] // images
        deepstack = getattr(out, "deepstack_features", None)  # Qwen3-VL: per level [sum N_i, hidden]
        if deepstack:
            deepstack = list(torch.split(torch.stack(deepstack), per_image, dim=1))
        return QwenImageFeatures(list(torch.split(merged, per_image)), grids, deepstack or None)

    # ---- splice with M-RoPE positions ----
    def splice_inputs(self, input_ids, attention_mask, image_features, image_indices, padding_side="right"):
        """Token embeddings with each conversation's image features in place of its placeholder, and the Qwen-VL
        model's own 3-D rope positions ``[3, B, T]`` for the result (text: the same position on all three axes;
        image: its temporal/row/column grid after the preceding text; text after it continues from the largest).
        Qwen3-VL: ``decoder_kwargs`` carries the image positions (``visual_pos_masks``) and the deepstack features."""
        features = None if image_features is None else QwenImageFeatures.gather(image_features)
        spliced = super().splice_inputs(
            input_ids, attention_mask, None if features is None else features.embeddings, image_indices, padding_side
        )
        mask = spliced.attention_mask
        # the expanded positions no input token maps to, within the mask, are the image's
        from_tokens = torch.zeros_like(mask, dtype=torch.bool)
        rows, cols = torch.nonzero(spliced.token_positions >= 0, as_tuple=True)
        from_tokens[rows, spliced.token_positions[rows, cols]] = True
        token_types = (mask.bool() & ~from_tokens).long()  # 1 = image, 0 = text (Qwen-VL's mm_token_type_ids)
        has_image = (input_ids.to(mask.device) == self.config.image_token_index) & attention_mask.to(mask.device).bool()
        image_rows = [row for row in range(input_ids.shape[0]) if bool(has_image[row].any())]
        grids = None
        if image_rows:
            grids = torch.stack([features.grids[image_indices[row]] for row in image_rows]).to(mask.device)
        position_ids, _ = self.vlm.model.get_rope_index(
            token_types, mm_token_type_ids=token_types, image_grid_thw=grids, attention_mask=mask
        )
        deepstack = None if features is None else features.deepstack_inputs([image_indices[row] for row in image_rows])
        extra = None
        if deepstack is not None:
            extra = {"visual_pos_masks": token_types.bool(), "deepstack_visual_embeds": deepstack}
        return SplicedInputs(spliced.inputs_embeds, mask, position_ids, spliced.token_positions, extra,
                             spliced.image_positions)

    # ---- the full forward (training, teacher-forced checks) ----
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values=None,
        sam_pixel_values: torch.Tensor | None = None,
        image_indices: list[int] | None = None,
        resized_sizes: list[tuple[int, int]] | None = None,
        original_sizes: list[tuple[int, int]] | None = None,
        labels: torch.Tensor | None = None,
        gt_masks: list[torch.Tensor] | None = None,
        image_features=None,
        sam_image_embeddings: Sam2ImageFeatures | None = None,
        return_logits: bool = True,
    ) -> ReasonSegOutput:
        """One pass over a batch of conversations (as :meth:`Sa2VAForCausalLM.forward`); pixel_values as
        :meth:`encode_images` takes them, sam_pixel_values ``[num_images, 3, 1024, 1024]``."""
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        return self.segmentation_pass(input_ids, attention_mask, image_features, image_indices, sam_pixel_values,
                                      sam_image_embeddings, resized_sizes, original_sizes, labels, gt_masks,
                                      return_logits)


AutoModel.register(Sa2VAQwenConfig, Sa2VAQwenForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(Sa2VAQwenConfig, Sa2VAQwenForCausalLM, exist_ok=True)
