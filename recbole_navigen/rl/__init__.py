"""The reinforcement stage of NaviGen: GRPO rewards (pure functions), the judges that score instructions,
and the GRPO trainer that plugs into RecBole's training flow."""
