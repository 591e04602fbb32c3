"""GenFuser (seq2seq fusion of the top k) and candidate generation."""
