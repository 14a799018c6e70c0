"""Data preparation: turning raw public dumps into RecBole atomic files."""
