"""Training data: built-in corpora, your own files, tokenizers."""
