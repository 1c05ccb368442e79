"""Export trained byte LMs as Hugging Face `transformers` checkpoints (model weights, config and tokenizer)."""
