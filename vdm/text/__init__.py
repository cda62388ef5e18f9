"""Text encoders, one interface (the core contract's path `vdm.text`; the homes are the modules named below).

    encoder = load_text_encoder(folder)          # a HuggingFace T5 (v1.1 / Flan-T5) folder, frozen (vdm.text.encoder)
    sequence, mask, pooled = encoder.encode(prompts)   # [B, L, d], [B, L] bool, [B, d]

The encoder trained from scratch (GLIDE) is `ScratchTextEncoder` over a `WordVocabulary` (vdm.text.scratch,
vdm.text.vocab); `caption_embeddings` computes a frozen encoder's embeddings of a caption set once and caches
them (vdm.text.cache). docs/text.md describes them.
"""

from vdm.text.cache import CaptionEmbeddings, caption_embeddings, data_cache_dir
from vdm.text.encoder import EncoderFolderError, TextEncoder, Tokenizer, load_text_encoder
from vdm.text.scratch import ScratchTextEncoder
from vdm.text.vocab import UnknownWordError, WordVocabulary

__all__ = [
    "CaptionEmbeddings",
    "EncoderFolderError",
    "ScratchTextEncoder",
    "TextEncoder",
    "Tokenizer",
    "UnknownWordError",
    "WordVocabulary",
    "caption_embeddings",
    "data_cache_dir",
    "load_text_encoder",
]
