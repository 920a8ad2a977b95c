"""mtforget inside training stacks it does not run: :mod:`mtforget.integrations.transformers`
for the Hugging Face Trainer (and what builds on it: TRL, LLaMA-Factory, Axolotl)."""
