"""Instruction supervision for NaviGen's cid2ins task: one training sample per user, a teacher (an LLM
through the teacher client, or the offline heuristic) that reasons from the history to the target (step 1),
searches for the best generation instruction by evolution (step 2) and distils both into the student's
reasoning (step 3), written as a resumable JSONL file. Knows nothing of models."""
