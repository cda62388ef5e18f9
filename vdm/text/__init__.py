"""Text encoders, one interface (the core contract's path `vdm.text`; the homes are the modules named below).

    encoder = load_text_encoder(folder)          # a HuggingFace T5 (v1.1 / Flan-T5) folder, frozen (vdm.text.encoder)
    sequence, mask, pooled = encoder.encode(prompts)   # [B, L, d], [B, L] bool, [B, d]

The math of the encoder is vdm.text.t5; its tokenizer vdm.text.tokenizer.
"""

from vdm.text.encoder import EncoderFolderError, TextEncoder, Tokenizer, load_text_encoder

__all__ = ["EncoderFolderError", "TextEncoder", "Tokenizer", "load_text_encoder"]
