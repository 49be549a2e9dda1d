"""Triple generation: annotate mined images, filter pairs, write instructions, store triples."""
