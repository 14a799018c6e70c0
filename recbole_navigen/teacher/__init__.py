"""Talking to teacher LLMs: one client for OpenAI-compatible servers and local Hugging Face models,
with retries, a response cache and token accounting, plus parsing of JSON out of their answers."""
