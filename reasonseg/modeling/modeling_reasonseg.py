"""The reasoning-segmentation model: a LLaVA-style vision-language model whose [SEG] states prompt SAM.

    image -> vision tower -> projector --+
                                         +-> splice into token embeddings -> causal LM -> tokens
    prompt -> tokens --------------------+                                      |
    image -> SAM image encoder -> image embedding          hidden state feeding each [SEG] -> [SEG] projection
                                      +----------------> SAM mask decoder <-------------+ -> upscale -> mask logits
"""

import torch
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel

from .configuration_reasonseg import ReasonSegConfig
from .multimodal_inputs import SplicedInputs
from .placement import execution_device, parameter_dtype
from .point_prompts import innermost_points_in_sam_frame, positive_point_embeddings
from .projector import build_projector
from .sam import build_sam_model, decode_seg_masks, sam_image_embeddings
from .seg_projection import SegProjection
from .language_delegation import LanguageModelDelegation
from .segmentation_pass import ReasonSegOutput, SegmentationPass


class ReasonSegPreTrainedModel(PreTrainedModel):
    config: ReasonSegConfig
    base_model_prefix = "reasonseg"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # the mask decoder and prompt encoder stay whole on one device, where the masks are computed
    _no_split_modules = [
        "LlamaDecoderLayer", "Qwen2DecoderLayer", "CLIPEncoderLayer", "SiglipEncoderLayer", "SamVisionLayer",
        "SamMaskDecoder", "SamPromptEncoder", "SegProjection",
    ]
    input_modalities = ("image", "text")


class ReasonSegForCausalLM(LanguageModelDelegation, SegmentationPass, ReasonSegPreTrainedModel):
    def __init__(self, config: ReasonSegConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = build_projector(
            config.projector_type, config.vision_config.hidden_size, config.text_config.hidden_size
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.sam = build_sam_model(config.sam_config)
        self.seg_projection = SegProjection(config.text_config.hidden_size, config.seg_embedding_dim)
        self.post_init()

    # ---- the two image branches ----
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision-tower pixels ``[B, 3, h, w]`` -> projected image features ``[B, N, hidden]``."""
        tower = self.vision_tower
        outputs = tower(pixel_values.to(execution_device(tower), parameter_dtype(tower)), output_hidden_states=True)
        features = outputs.hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "patch":
            features = features[:, 1:]
        projector = self.multi_modal_projector
        return projector(features.to(execution_device(projector), parameter_dtype(projector)))

    def encode_sam_images(self, sam_pixel_values: torch.Tensor) -> torch.Tensor:
        """SAM pixels ``[B, 3, S, S]`` -> image embeddings ``[B, C, S/16, S/16]``."""
        return sam_image_embeddings(self.sam, sam_pixel_values.to(execution_device(self.sam.vision_encoder)))

    # ---- text side ----
    def seg_token_locations(self, input_ids: torch.Tensor, spliced: SplicedInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, expanded positions) of the hidden states that feed each [SEG] of ``input_ids``, in reading order.

        ``seg_hidden_position="before"``: the position just before the [SEG] (whose logits predict it; LISA);
        ``"at"``: the [SEG] position itself (Sa2VA).
        """
        seg_id = self.config.seg_token_id
        rows, cols = torch.nonzero(input_ids == seg_id, as_tuple=True)
        positions = spliced.token_positions[rows, cols.to(spliced.token_positions.device)]
        if self.config.seg_hidden_position == "before":
            positions = positions - 1
        return rows, positions

    # ---- mask side ----
    def decode_prompt_masks(self, image_embedding: torch.Tensor, prompts: torch.Tensor):
        sam_device = execution_device(self.sam.mask_decoder)
        return decode_seg_masks(self.sam, image_embedding.to(sam_device), prompts.to(sam_device),
                                self.config.mask_selection)

    @property
    def sam_input_size(self) -> int:
        return self.config.sam_config.vision_config.image_size

    # ---- the full forward (training and LISA's forced-[SEG] validation) ----
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        sam_pixel_values: torch.Tensor | None = None,
        image_indices: list[int] | None = None,
        resized_sizes: list[tuple[int, int]] | None = None,
        original_sizes: list[tuple[int, int]] | None = None,
        labels: torch.Tensor | None = None,
        gt_masks: list[torch.Tensor] | None = None,
        image_features: torch.Tensor | None = None,
        sam_image_embeddings: torch.Tensor | None = None,
        return_logits: bool = True,
    ) -> ReasonSegOutput:
        """One pass over a batch of conversations.

        input_ids / attention_mask / labels: ``[B, L]`` (right-padded; labels -100 where not supervised);
        pixel_values: vision-tower pixels ``[num_images, 3, h, w]``; sam_pixel_values ``[num_images, 3, S, S]``;
        image_indices: the image of each conversation (several conversations may share one image);
        resized_sizes / original_sizes: per image, the SAM-resized and original ``(H, W)``;
        gt_masks: per image, ``[n_i, H_i, W_i]`` targets for its [SEG]s in order (enables the mask losses).
        Precomputed ``image_features`` / ``sam_image_embeddings`` skip the encoders.
        """
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        output = self.segmentation_pass(input_ids, attention_mask, image_features, image_indices, sam_pixel_values,
                                        sam_image_embeddings, resized_sizes, original_sizes, labels, gt_masks,
                                        return_logits)
        weight = self.config.seg_point_loss_weight
        if weight and gt_masks is not None and output.seg_embeddings is not None and output.loss is not None:
            output.seg_point_loss = weight * self.seg_point_loss(output.seg_embeddings, gt_masks, resized_sizes,
                                                                 original_sizes)
            output.loss = output.loss + output.seg_point_loss.to(output.loss.device)
        return output

    def seg_point_loss(self, seg_embeddings: torch.Tensor, gt_masks: list[torch.Tensor], resized_sizes,
                       original_sizes) -> torch.Tensor:
        """Mean squared distance of the [SEG] prompts (``[n, C]``, image by image in reading order, as ``gt_masks``)
        to SAM's positive-point token at each target's innermost pixel (a fixed target: no gradient flows into it)."""
        points = torch.cat([innermost_points_in_sam_frame(masks, tuple(resized), tuple(original))
                            for masks, resized, original in zip(gt_masks, resized_sizes, original_sizes)])
        if points.shape[0] == 0:
            return seg_embeddings.sum() * 0.0
        with torch.no_grad():
            targets = positive_point_embeddings(self.sam, points)
        return torch.nn.functional.mse_loss(seg_embeddings.float(), targets.float().to(seg_embeddings.device))

    def sam_embeddings_per_image(self, embeddings) -> list:
        return [embeddings[i : i + 1] for i in range(embeddings.shape[0])]


AutoModel.register(ReasonSegConfig, ReasonSegForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(ReasonSegConfig, ReasonSegForCausalLM, exist_ok=True)


def _register_auto_processor() -> None:
    from transformers import AutoProcessor

    from .. import ReasonSegAutoProcessor

    AutoProcessor.register(ReasonSegConfig, ReasonSegAutoProcessor, exist_ok=True)


_register_auto_processor()
