"""The training / teacher-forced pass every reasonseg model shares once its images are encoded: splice, run the
language model, take the state feeding each [SEG], decode one mask per [SEG] with the model's SAM, and the losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .image_attention import decoder_attention_mask
from .losses import mask_losses, token_cross_entropy
from .multimodal_inputs import SplicedInputs, splice_image_features
from .placement import execution_device
from .sam import upscale_mask_logits


@dataclass
class ReasonSegOutput(ModelOutput):
    """Output of the segmentation pass (``forward`` of both model classes).

    pred_masks: per image, ``[n_i, H_i, W_i]`` float32 mask logits at the original size (one per [SEG], in order);
    seg_hidden_states ``[n, hidden]`` and seg_embeddings ``[n, prompt_dim]``: for every [SEG] of the batch.
    """

    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    mask_bce_loss: torch.Tensor | None = None
    mask_dice_loss: torch.Tensor | None = None
    mask_loss: torch.Tensor | None = None
    seg_point_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pred_masks: list[torch.Tensor] | None = None
    low_res_masks: list[torch.Tensor] | None = None
    iou_predictions: list[torch.Tensor] | None = None
    seg_hidden_states: torch.Tensor | None = None
    seg_embeddings: torch.Tensor | None = None


class SegmentationPass:
    """Mixed into a model that has ``decoder``, ``get_output_embeddings``,
    ``seg_token_locations``, ``encode_sam_images``, ``seg_projection`` and ``config``, and says how its SAM
    embeddings split per image (:meth:`sam_embeddings_per_image`), how its SAM decodes prompt embeddings
    (:meth:`decode_prompt_masks`) and the side of SAM's input (:attr:`sam_input_size`)."""

    def sam_embeddings_per_image(self, embeddings) -> list:
        raise NotImplementedError

    def decode_prompt_masks(self, image_embedding, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, C]`` prompts on one image -> low-res mask logits ``[n, h, w]`` and predicted IoU ``[n]``."""
        raise NotImplementedError

    @property
    def sam_input_size(self) -> int:
        raise NotImplementedError

    def masks_from_seg_hidden(
        self,
        seg_hidden_states: torch.Tensor,
        image_embedding,
        resized_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All [SEG] states of one image -> (mask logits ``[n, H, W]``, low-res logits, predicted IoU, prompts)."""
        prompts = self.seg_projection(seg_hidden_states.to(execution_device(self.seg_projection)))
        if prompts.shape[0] == 0:
            sam_device = execution_device(self.sam.mask_decoder)
            empty = torch.zeros((0, *original_size), dtype=torch.float32, device=sam_device)
            return empty, empty.new_zeros((0, 0, 0)), empty.new_zeros((0,)), prompts
        low_res, iou = self.decode_prompt_masks(image_embedding, prompts)
        return upscale_mask_logits(low_res, resized_size, original_size, self.sam_input_size), low_res, iou, prompts

    def splice_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_features,
        image_indices: list[int] | None,
        padding_side: str = "right",
    ) -> SplicedInputs:
        """Token embeddings with each conversation's image features in place of its image token."""
        embedding = self.get_input_embeddings()
        input_ids = input_ids.to(execution_device(embedding))
        token_embeddings = embedding(input_ids.clamp(min=0))
        return splice_image_features(
            token_embeddings,
            input_ids,
            attention_mask.to(input_ids.device),
            image_features,
            image_indices,
            self.config.image_token_index,
            padding_side,
        )

    def attending_image_positions(self, spliced: SplicedInputs) -> torch.Tensor | None:
        """The image positions that attend to each other both ways (config ``image_attention="bidirectional"``), or
        ``None`` for a causal model (LISA, Sa2VA)."""
        if getattr(self.config, "image_attention", "causal") != "bidirectional":
            return None
        return spliced.image_positions

    def decoder_attention_mask(self, spliced: SplicedInputs) -> torch.Tensor:
        """The decoder's mask over the whole spliced sequence: the 2D padding mask, or the 4D image-block mask."""
        return decoder_attention_mask(spliced.attention_mask, self.attending_image_positions(spliced), None,
                                      self.decoder.config, spliced.inputs_embeds.dtype)

    def segmentation_pass(self, input_ids, attention_mask, image_features, image_indices, sam_pixel_values,
                          sam_image_embeddings, resized_sizes, original_sizes, labels, gt_masks, return_logits):
        if image_indices is None:
            image_indices = list(range(input_ids.shape[0]))
        spliced = self.splice_inputs(input_ids, attention_mask, image_features, image_indices)
        hidden = self.decoder(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=self.decoder_attention_mask(spliced),
            position_ids=spliced.position_ids,
            use_cache=False,
            **(spliced.decoder_kwargs or {}),
        ).last_hidden_state
        logits = self.get_output_embeddings()(hidden) if (return_logits or labels is not None) else None

        output = ReasonSegOutput(logits=logits)
        if labels is not None:
            expanded_labels = spliced.expand_token_values(labels.to(spliced.token_positions.device), -100)
            output.ce_loss = token_cross_entropy(logits, expanded_labels.to(logits.device))

        rows, positions = self.seg_token_locations(input_ids.to(spliced.token_positions.device), spliced)
        seg_hidden = hidden[rows.to(hidden.device), positions.to(hidden.device)]
        output.seg_hidden_states = seg_hidden
        if sam_pixel_values is not None or sam_image_embeddings is not None:
            if sam_image_embeddings is None:
                sam_image_embeddings = self.encode_sam_images(sam_pixel_values)
            row_images = torch.as_tensor(image_indices, device=rows.device)[rows]
            pred_masks, low_res_masks, ious, prompts = [], [], [], []
            for image, embedding in enumerate(self.sam_embeddings_per_image(sam_image_embeddings)):
                selected = row_images == image
                masks, low_res, iou, prompt = self.masks_from_seg_hidden(
                    seg_hidden[selected.to(seg_hidden.device)],
                    embedding,
                    tuple(resized_sizes[image]),
                    tuple(original_sizes[image]),
                )
                pred_masks.append(masks)
                low_res_masks.append(low_res)
                ious.append(iou)
                prompts.append(prompt)
            output.pred_masks, output.low_res_masks, output.iou_predictions = pred_masks, low_res_masks, ious
            output.seg_embeddings = torch.cat(prompts) if prompts else None
            if gt_masks is not None:
                bce, dice = mask_losses(pred_masks, [m.to(p.device) for m, p in zip(gt_masks, pred_masks)])
                output.mask_bce_loss = self.config.bce_loss_weight * bce
                output.mask_dice_loss = self.config.dice_loss_weight * dice
                output.mask_loss = output.mask_bce_loss + output.mask_dice_loss
        if output.ce_loss is not None:
            ce = self.config.ce_loss_weight * output.ce_loss
            output.loss = ce + output.mask_loss.to(ce.device) if output.mask_loss is not None else ce
        return output
