"""The stage machinery every stage shares: the Stage object and keep/drop runner, accounting, text keys, MinHash,
the models (encoder, cross-encoder teacher, search) and negative selection. Imports nothing from stages or pipeline."""
