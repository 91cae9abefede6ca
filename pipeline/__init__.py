"""The per-document pass (filter, tokenize), sequence forming, mixing and the training stream."""
