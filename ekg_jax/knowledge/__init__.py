"""Ensemble knowledge: the interim sub-networks the search passes through
become teachers (ekg_algorithm.md section 6).

- `memory_bank`: the teachers chosen from the search's history, their
  weights re-trained and their logits stored for fine-tuning;
- `topk`: the top-k logits a teacher's knowledge is kept as.

Imports the core and the foundation only.
"""
