"""Model loading, language control, LoRA and tokenizer training."""
