"""Generation, metrics, language identification and forgetting."""
