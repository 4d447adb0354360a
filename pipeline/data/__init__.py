"""The text side: reading corpora, sampling sentences, spaCy, aligning words to model pieces, syntax statistics
of the corpus."""
