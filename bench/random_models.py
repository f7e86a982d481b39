"""BERT models with random weights built from a config, saved where sentence-transformers can load them.

For the mining benchmark (the shape of moka-ai/m3e-base: BERT-base, a vocabulary of 21,128 tokens covering CJK)
and for tests (a tiny one). Speed and code paths are real; the embeddings mean nothing.
"""

from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer, models
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
M3E_BASE_SHAPE = {"vocab_size": 21_128, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "max_position_embeddings": 512}
TINY_SHAPE = {"vocab_size": 21_128, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 512}


PUNCTUATION = list("，。！？：；、“”‘’（）《》【】…—·～")


def vocabulary(size: int) -> list[str]:
    """`size` tokens: the special ones, printable ASCII, Chinese punctuation, then CJK ideographs from U+4E00 (21,128
    tokens cover the whole unified block, as m3e-base's vocabulary does)."""
    head = SPECIAL + [chr(c) for c in range(33, 127)] + PUNCTUATION
    return head + [chr(0x4E00 + i) for i in range(size - len(head))]


def _config_and_tokenizer(folder: Path, shape: dict, **config: object) -> tuple[BertConfig, BertTokenizerFast]:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(vocabulary(shape["vocab_size"]))}
    tokenizer = BertTokenizerFast(vocab=vocab, tokenize_chinese_chars=True)
    return BertConfig(**shape, **config), tokenizer


def build_encoder(folder: Path, shape: dict = TINY_SHAPE, max_seq_length: int = 256, seed: int = 0) -> Path:
    """A SentenceTransformer (BERT + mean pooling) with random weights drawn from `seed`, saved in `folder`; returns
    the folder."""
    torch.manual_seed(seed)
    bert_dir = folder / "bert"
    config, tokenizer = _config_and_tokenizer(bert_dir, shape)
    BertModel(config).save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    transformer = models.Transformer(str(bert_dir), max_seq_length=max_seq_length)
    pooling = models.Pooling(shape["hidden_size"], pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder))
    return folder


def build_cross_encoder(folder: Path, shape: dict = TINY_SHAPE, seed: int = 0) -> Path:
    """A one-label BERT sequence classifier (a cross-encoder) with random weights drawn from `seed`, saved in
    `folder`."""
    torch.manual_seed(seed)
    config, tokenizer = _config_and_tokenizer(folder, shape, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
