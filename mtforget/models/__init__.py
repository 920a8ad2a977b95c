"""Model loading, language control and the built-in tiny bases."""
