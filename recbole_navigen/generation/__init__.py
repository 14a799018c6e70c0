"""What a trained NaviGen writes for users: ranked next items, its own terms for them, and the creative
instruction with its reasoning, as JSONL a person can read."""
