"""A compact pretraining loop that consumes the stream and logs which data it ate."""
