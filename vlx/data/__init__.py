"""Input pipeline: sources, tokenizer, Grain pipelines."""
