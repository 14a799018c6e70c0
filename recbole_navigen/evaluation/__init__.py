"""Evaluation helpers around RecBole's evaluator: the fixed user subset that CPU runs evaluate on."""
